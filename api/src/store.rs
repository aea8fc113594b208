//! A typed store over etcd: objects are JSON under the keys of
//! [`crate::keys`], and every write is a transaction guarded by the
//! revision the writer read, so concurrent writers never overwrite each
//! other silently. `metadata.resourceVersion` carries the etcd mod revision
//! out of the store and back in, as in Kubernetes.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, Txn, TxnOp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::encryption::{Encryption, EncryptionError};
use crate::keys;
use crate::kinds::Kind;
use crate::meta::{self, Object};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed since it was read; read it again and retry.
    #[error("conflict on {key}: the object has been modified; please apply your changes to the latest version and try again")]
    Conflict { key: String },
    /// `create` found an object already there.
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    /// An update or guarded delete found nothing.
    #[error("{key} not found")]
    NotFound { key: String },
    /// A stored value is not the JSON of its kind.
    #[error("cannot decode {key}: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// An object could not be encoded.
    #[error("cannot encode {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// An object to update carries no `resourceVersion` to guard with.
    #[error("{key}: metadata.resourceVersion is required for an update")]
    MissingResourceVersion { key: String },
    /// etcd itself failed or could not be reached.
    #[error("etcd: {0}")]
    Etcd(etcd_client::Error),
    /// A value could not be encrypted, or a stored one decrypted.
    #[error(transparent)]
    Encryption(#[from] EncryptionError),
}

// By hand rather than `#[from]`: the message already carries the cause, and
// a `source` as well would print it twice in error chains.
impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        StoreError::Etcd(e)
    }
}

impl StoreError {
    /// Whether re-reading and retrying can succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. } | StoreError::NotFound { .. }
        )
    }
}

/// Objects of one kind read at one etcd revision.
#[derive(Debug, Clone)]
pub struct List<T> {
    pub items: Vec<T>,
    /// The etcd revision the list was read at; watch from `revision + 1`.
    pub revision: i64,
}

/// A handle on etcd. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct Store {
    client: Client,
    /// How the values of encrypted kinds are sealed and opened.
    encryption: Option<Arc<Encryption>>,
}

impl Store {
    /// Connects to etcd, failing after a few seconds rather than hanging, so
    /// callers can back off and report.
    pub async fn connect(endpoints: &[String]) -> Result<Store, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(15))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Store {
            client,
            encryption: None,
        })
    }

    /// This store, encrypting and decrypting the values `encryption`
    /// configures (Secrets, as `--encryption-provider-config` says).
    pub fn with_encryption(mut self, encryption: Encryption) -> Store {
        self.encryption = Some(Arc::new(encryption));
        self
    }

    /// The bytes to store under `key` for its plain JSON `value`.
    pub fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        match &self.encryption {
            Some(e) => Ok(e.seal(key, value)?),
            None => Ok(value),
        }
    }

    /// The plain JSON of a stored key-value.
    pub fn open<'a>(&self, kv: &'a KeyValue) -> Result<Cow<'a, [u8]>, StoreError> {
        let stored = kv.value();
        match &self.encryption {
            Some(e) => Ok(e.open(&String::from_utf8_lossy(kv.key()), stored)?),
            None if stored.starts_with(b"k8s:enc:") => {
                Err(StoreError::Encryption(EncryptionError::Value {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    message:
                        "stored encrypted; pass the --encryption-provider-config that wrote it"
                            .into(),
                }))
            }
            None => Ok(Cow::Borrowed(stored)),
        }
    }

    /// Writes again every value of an encrypted kind that is not stored
    /// the way a write would store it now: plain ones once encryption is
    /// configured, and those under an older key after a rotation (or
    /// encrypted ones once `identity` comes first, to decrypt them all).
    /// Returns how many were rewritten; a value changed meanwhile was
    /// written anew by its writer and is left alone.
    pub async fn reseal_stale(&self) -> Result<usize, StoreError> {
        let Some(encryption) = self.encryption.clone() else {
            return Ok(0);
        };
        let mut rewritten = 0;
        for prefix in encryption.prefixes() {
            for kv in self.list_prefix(prefix).await?.items {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                if !encryption.is_stale(&key, kv.value()) {
                    continue;
                }
                let sealed = self.seal(&key, self.open(&kv)?.into_owned())?;
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::put(key.as_str(), sealed, None)]);
                if self.client.clone().txn(txn).await?.succeeded() {
                    rewritten += 1;
                }
            }
        }
        Ok(rewritten)
    }

    /// Decodes a stored object of any kind, decrypting it if need be, with
    /// `resourceVersion` set from the mod revision.
    pub fn decode<T: Object>(&self, kv: &KeyValue) -> Result<T, StoreError> {
        decode_bytes(kv, &self.open(kv)?)
    }

    /// A stored object as JSON, decrypted if need be, for callers that
    /// diff JSON (the reconciler).
    pub fn decode_value(&self, kv: &KeyValue) -> Result<serde_json::Value, StoreError> {
        serde_json::from_slice(&self.open(kv)?).map_err(|source| StoreError::Decode {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            source,
        })
    }

    /// The raw etcd client, for leases and transactions spanning kinds.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Reads one object.
    pub async fn get<T: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let key = keys::object_key(T::STORE_KIND, namespace, name);
        let mut resp = self.client.clone().get(key.as_str(), None).await?;
        match resp.take_kvs().into_iter().next() {
            Some(kv) => self.decode(&kv).map(Some),
            None => Ok(None),
        }
    }

    /// Lists the objects of a kind, in one namespace or in all of them.
    pub async fn list<T: Object>(&self, namespace: Option<&str>) -> Result<List<T>, StoreError> {
        let raw = self.list_raw(T::STORE_KIND, namespace).await?;
        let items = raw
            .items
            .iter()
            .map(|kv| self.decode(kv))
            .collect::<Result<Vec<T>, _>>()?;
        Ok(List {
            items,
            revision: raw.revision,
        })
    }

    /// Lists the key-values of a kind without decoding them, for callers
    /// that diff JSON (the reconciler) or must survive one bad value.
    pub async fn list_raw(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<List<KeyValue>, StoreError> {
        self.list_prefix(&keys::namespace_prefix(kind, namespace))
            .await
    }

    /// Lists every key-value under a prefix.
    pub async fn list_prefix(&self, prefix: &str) -> Result<List<KeyValue>, StoreError> {
        let mut resp = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(List {
            items: resp.take_kvs(),
            revision,
        })
    }

    /// Creates an object that must not exist yet. Fills in what the API
    /// server would: uid, creation time, generation and the namespace.
    pub async fn create<T: Object>(&self, mut obj: T) -> Result<T, StoreError> {
        prepare_create(&mut obj);
        let key = object_key_of(&obj);
        let value = self.seal(&key, encode(&key, &obj)?)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        let resp = self.client.clone().txn(txn).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists { key });
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        obj.metadata_mut().resource_version = Some(rev.to_string());
        Ok(obj)
    }

    /// Replaces an object if it has not changed since it was read (its
    /// `resourceVersion` is still the stored mod revision).
    pub async fn update<T: Object>(&self, mut obj: T) -> Result<T, StoreError> {
        let key = object_key_of(&obj);
        let rev = resource_version(&obj.metadata().resource_version)
            .ok_or_else(|| StoreError::MissingResourceVersion { key: key.clone() })?;
        let value = self.seal(&key, encode(&key, &obj)?)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        let resp = self.client.clone().txn(txn).await?;
        if !resp.succeeded() {
            return Err(StoreError::Conflict { key });
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        obj.metadata_mut().resource_version = Some(rev.to_string());
        Ok(obj)
    }

    /// Reads an object, lets `change` edit it, and writes it back, retrying
    /// on conflicts (client-go's RetryOnConflict). `change` returns false to
    /// leave the object alone. Returns the object as stored, or `None` if it
    /// does not exist.
    pub async fn modify<T, F>(
        &self,
        namespace: Option<&str>,
        name: &str,
        mut change: F,
    ) -> Result<Option<T>, StoreError>
    where
        T: Object,
        F: FnMut(&mut T) -> bool,
    {
        for _ in 0..8 {
            let Some(mut obj) = self.get::<T>(namespace, name).await? else {
                return Ok(None);
            };
            if !change(&mut obj) {
                return Ok(Some(obj));
            }
            match self.update(obj).await {
                Ok(stored) => return Ok(Some(stored)),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            key: keys::object_key(T::STORE_KIND, namespace, name),
        })
    }

    /// Deletes an object; with `resource_version`, only if unchanged.
    /// Returns whether something was deleted.
    pub async fn delete<T: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
        resource_version: Option<&str>,
    ) -> Result<bool, StoreError> {
        let key = keys::object_key(T::STORE_KIND, namespace, name);
        let compares = match resource_version.and_then(|v| v.parse::<i64>().ok()) {
            Some(rev) => vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)],
            None => vec![Compare::create_revision(
                key.as_str(),
                CompareOp::Greater,
                0,
            )],
        };
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let resp = self.client.clone().txn(txn).await?;
        if resp.succeeded() {
            Ok(true)
        } else if resource_version.is_some() {
            Err(StoreError::Conflict { key })
        } else {
            Ok(false)
        }
    }

    /// Reads a JSON record that is not an object (history, applied commit).
    pub async fn get_record<R: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<R>, StoreError> {
        let mut resp = self.client.clone().get(key, None).await?;
        match resp.take_kvs().into_iter().next() {
            Some(kv) => serde_json::from_slice(kv.value())
                .map(Some)
                .map_err(|source| StoreError::Decode {
                    key: key.to_string(),
                    source,
                }),
            None => Ok(None),
        }
    }
}

/// Fills in the fields the API server sets on create.
pub fn prepare_create<T: Object>(obj: &mut T) {
    let namespaced = T::STORE_KIND.namespaced();
    let m = obj.metadata_mut();
    if m.uid.is_none() {
        m.uid = Some(meta::new_uid());
    }
    if m.creation_timestamp.is_none() {
        m.creation_timestamp = Some(meta::now());
    }
    if m.generation.is_none() {
        m.generation = Some(1);
    }
    if namespaced && m.namespace.is_none() {
        m.namespace = Some("default".to_string());
    }
    if !namespaced {
        m.namespace = None;
    }
}

/// The key an object is stored under.
pub fn object_key_of<T: Object>(obj: &T) -> String {
    keys::object_key(T::STORE_KIND, meta::namespace(obj), meta::name(obj))
}

fn resource_version(v: &Option<String>) -> Option<i64> {
    v.as_deref().and_then(|s| s.parse().ok())
}

/// Encodes an object as stored: JSON without `resourceVersion`, which is
/// the etcd revision and never part of the value.
pub fn encode<T: Serialize>(key: &str, obj: &T) -> Result<Vec<u8>, StoreError> {
    let mut value = serde_json::to_value(obj).map_err(|source| StoreError::Encode {
        key: key.to_string(),
        source,
    })?;
    if let Some(m) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&value).map_err(|source| StoreError::Encode {
        key: key.to_string(),
        source,
    })
}

/// Decodes a stored object of a kind that is never encrypted (not a Secret
/// or ConfigMap: those go through [`Store::decode`]), setting
/// `resourceVersion` from the key-value's mod revision.
pub fn decode<T: Object>(kv: &KeyValue) -> Result<T, StoreError> {
    decode_bytes(kv, kv.value())
}

fn decode_bytes<T: Object>(kv: &KeyValue, plain: &[u8]) -> Result<T, StoreError> {
    let mut obj: T = serde_json::from_slice(plain).map_err(|source| StoreError::Decode {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        source,
    })?;
    obj.metadata_mut().resource_version = Some(kv.mod_revision().to_string());
    Ok(obj)
}
