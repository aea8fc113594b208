//! Encryption at rest of the values etcd holds for chosen kinds (Secrets),
//! configured as Kubernetes' API server is: an `EncryptionConfiguration`
//! file (`--encryption-provider-config`) lists, per resource, providers in
//! order. The first one encrypts what is written; all of them are tried
//! for what is read, so a key is rotated by putting the new one first and
//! keeping the old one listed until every value was written again.
//!
//! Providers: `aesgcm` (AES-256-GCM, or 128/192 by key length, with a
//! random 12-byte nonce and the etcd key as authenticated data, so a value
//! copied under another key does not decrypt) and `identity` (plain JSON).
//! Values are stored as Kubernetes stores them:
//! `k8s:enc:aesgcm:v1:<key name>:<nonce><ciphertext and tag>`, and
//! `etcdctl get` shows only that.

use std::collections::BTreeMap;
use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, Nonce};
use serde::Deserialize;
use thiserror::Error;

use crate::keys;
use crate::Kind;

/// What goes wrong reading the configuration or a value.
#[derive(Debug, Error)]
pub enum EncryptionError {
    /// The configuration file cannot be read.
    #[error("cannot read encryption configuration {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The configuration is not valid; the message names the field.
    #[error("encryption configuration {file}: {message}")]
    Config { file: String, message: String },
    /// A stored value no configured provider can read.
    #[error("{key}: {message}")]
    Value { key: String, message: String },
}

/// The configuration file, in Kubernetes' shape
/// (`apiserver.config.k8s.io/v1`, kind `EncryptionConfiguration`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    api_version: String,
    kind: String,
    resources: Vec<ResourceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceConfig {
    resources: Vec<String>,
    providers: Vec<ProviderConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderConfig {
    aesgcm: Option<KeysConfig>,
    identity: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysConfig {
    keys: Vec<KeyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    name: String,
    secret: String,
}

/// One AES-GCM key, by the name its values carry.
#[derive(Clone)]
enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

impl Cipher {
    fn new(key: &[u8]) -> Option<Cipher> {
        match key.len() {
            16 => Aes128Gcm::new_from_slice(key)
                .ok()
                .map(|c| Cipher::Aes128(Box::new(c))),
            32 => Aes256Gcm::new_from_slice(key)
                .ok()
                .map(|c| Cipher::Aes256(Box::new(c))),
            _ => None,
        }
    }

    fn seal(&self, nonce: &[u8; NONCE_LEN], payload: Payload<'_, '_>) -> Option<Vec<u8>> {
        let nonce = Nonce::from_slice(nonce);
        match self {
            Cipher::Aes128(c) => c.encrypt(nonce, payload).ok(),
            Cipher::Aes256(c) => c.encrypt(nonce, payload).ok(),
        }
    }

    fn open(&self, nonce: &[u8], payload: Payload<'_, '_>) -> Option<Vec<u8>> {
        let nonce = Nonce::from_slice(nonce);
        match self {
            Cipher::Aes128(c) => c.decrypt(nonce, payload).ok(),
            Cipher::Aes256(c) => c.decrypt(nonce, payload).ok(),
        }
    }
}

const NONCE_LEN: usize = 12;
const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";

/// A provider in the order the configuration lists it.
#[derive(Clone)]
enum Provider {
    AesGcm(Vec<(String, Cipher)>),
    Identity,
}

/// How the values of the configured kinds are written and read. Cheap to
/// clone into every [`crate::Store`].
#[derive(Clone)]
pub struct Encryption {
    /// Key prefix of a kind (`/commitd/objects/core/Secret/`) → providers.
    by_prefix: BTreeMap<String, Vec<Provider>>,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Encryption")
            .field("prefixes", &self.by_prefix.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Encryption {
    /// Reads an `EncryptionConfiguration` file.
    pub fn load(path: &Path) -> Result<Encryption, EncryptionError> {
        let text = std::fs::read_to_string(path).map_err(|source| EncryptionError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Encryption::parse(&text, &path.display().to_string())
    }

    /// Parses an `EncryptionConfiguration`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Encryption, EncryptionError> {
        let err = |message: String| EncryptionError::Config {
            file: file.to_string(),
            message,
        };
        let config: ConfigFile = serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?;
        if config.kind != "EncryptionConfiguration" {
            return Err(err(format!(
                "kind: must be EncryptionConfiguration, not {:?}",
                config.kind
            )));
        }
        if !config.api_version.starts_with("apiserver.config.k8s.io/") {
            return Err(err(format!(
                "apiVersion: must be apiserver.config.k8s.io/v1, not {:?}",
                config.api_version
            )));
        }
        let mut by_prefix = BTreeMap::new();
        for (i, resource) in config.resources.iter().enumerate() {
            let field = format!("resources[{i}]");
            let mut providers = Vec::new();
            for (j, p) in resource.providers.iter().enumerate() {
                let field = format!("{field}.providers[{j}]");
                match (&p.aesgcm, &p.identity) {
                    (Some(k), None) => providers.push(aesgcm(k, &field).map_err(&err)?),
                    (None, Some(_)) => providers.push(Provider::Identity),
                    _ => {
                        return Err(err(format!(
                            "{field}: name exactly one provider (aesgcm or identity)"
                        )))
                    }
                }
            }
            if providers.is_empty() {
                return Err(err(format!("{field}.providers: at least one is required")));
            }
            for name in &resource.resources {
                let kind = encryptable_kind(name).ok_or_else(|| {
                    err(format!(
                        "{field}.resources: {name:?} is not encrypted here; use secrets or configmaps"
                    ))
                })?;
                let prefix = keys::kind_prefix(kind);
                if by_prefix.insert(prefix, providers.clone()).is_some() {
                    return Err(err(format!("{field}.resources: {name:?} is listed twice")));
                }
            }
        }
        Ok(Encryption { by_prefix })
    }

    /// The key prefixes of the kinds it configures.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.by_prefix.keys().map(String::as_str)
    }

    fn providers(&self, key: &str) -> Option<&[Provider]> {
        self.by_prefix
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(_, p)| p.as_slice())
    }

    /// The bytes to store under `key` for the plain (JSON) `value`.
    pub fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, EncryptionError> {
        let Some(first) = self.providers(key).and_then(|p| p.first()) else {
            return Ok(value);
        };
        match first {
            Provider::Identity => Ok(value),
            Provider::AesGcm(keys) => {
                let Some((name, cipher)) = keys.first() else {
                    return Ok(value);
                };
                let nonce: [u8; NONCE_LEN] = rand::random();
                let sealed = cipher
                    .seal(
                        &nonce,
                        Payload {
                            msg: &value,
                            aad: key.as_bytes(),
                        },
                    )
                    .ok_or_else(|| EncryptionError::Value {
                        key: key.to_string(),
                        message: "encryption failed".into(),
                    })?;
                let mut out = format!("{AESGCM_PREFIX}{name}:").into_bytes();
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
                Ok(out)
            }
        }
    }

    /// The plain (JSON) value of the bytes stored under `key`.
    pub fn open<'a>(
        &self,
        key: &str,
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, EncryptionError> {
        let value_err = |message: String| EncryptionError::Value {
            key: key.to_string(),
            message,
        };
        if let Some(rest) = stored.strip_prefix(AESGCM_PREFIX.as_bytes()) {
            let at = rest
                .iter()
                .position(|b| *b == b':')
                .ok_or_else(|| value_err("encrypted value without a key name".into()))?;
            let name = String::from_utf8_lossy(&rest[..at]);
            let body = &rest[at + 1..];
            if body.len() < NONCE_LEN {
                return Err(value_err("encrypted value too short".into()));
            }
            let (nonce, sealed) = body.split_at(NONCE_LEN);
            let cipher = self
                .by_prefix
                .values()
                .flatten()
                .filter_map(|p| match p {
                    Provider::AesGcm(keys) => Some(keys),
                    Provider::Identity => None,
                })
                .flatten()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| c)
                .ok_or_else(|| {
                    value_err(format!(
                        "encrypted with aesgcm key {name:?}, which the encryption configuration does not list"
                    ))
                })?;
            let plain = cipher
                .open(
                    nonce,
                    Payload {
                        msg: sealed,
                        aad: key.as_bytes(),
                    },
                )
                .ok_or_else(|| {
                    value_err(format!("aesgcm key {name:?} does not decrypt this value"))
                })?;
            return Ok(std::borrow::Cow::Owned(plain));
        }
        if stored.starts_with(b"k8s:enc:") {
            return Err(value_err(
                "encrypted by a provider this configuration does not list".into(),
            ));
        }
        // Plain: fine where `identity` is listed (or the kind is not
        // encrypted at all), as for the API server.
        match self.providers(key) {
            Some(providers) if !providers.iter().any(|p| matches!(p, Provider::Identity)) => {
                Err(value_err(
                    "stored unencrypted, and the identity provider is not listed to read it".into(),
                ))
            }
            _ => Ok(std::borrow::Cow::Borrowed(stored)),
        }
    }

    /// Whether a value stored under `key` is not written the way a write
    /// would write it now (plain where it would be encrypted, or under an
    /// older key): such values are rewritten after a rotation.
    pub fn is_stale(&self, key: &str, stored: &[u8]) -> bool {
        match self.providers(key).and_then(|p| p.first()) {
            None | Some(Provider::Identity) => stored.starts_with(b"k8s:enc:"),
            Some(Provider::AesGcm(keys)) => match keys.first() {
                Some((name, _)) => {
                    !stored.starts_with(format!("{AESGCM_PREFIX}{name}:").as_bytes())
                }
                None => false,
            },
        }
    }
}

/// The kinds whose values can be encrypted, by the resource names the
/// configuration uses.
fn encryptable_kind(resource: &str) -> Option<Kind> {
    match resource {
        "secrets" | "secrets." => Some(Kind::Secret),
        "configmaps" | "configmaps." => Some(Kind::ConfigMap),
        _ => None,
    }
}

fn aesgcm(config: &KeysConfig, field: &str) -> Result<Provider, String> {
    use base64::Engine as _;
    if config.keys.is_empty() {
        return Err(format!("{field}.aesgcm.keys: at least one key is required"));
    }
    let mut keys = Vec::new();
    for (i, k) in config.keys.iter().enumerate() {
        let field = format!("{field}.aesgcm.keys[{i}]");
        if k.name.is_empty() || k.name.contains(':') {
            return Err(format!("{field}.name: must be non-empty and without ':'"));
        }
        if keys.iter().any(|(n, _)| *n == k.name) {
            return Err(format!("{field}.name: {:?} is listed twice", k.name));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(k.secret.trim())
            .map_err(|_| format!("{field}.secret: must be base64"))?;
        let cipher = Cipher::new(&bytes).ok_or_else(|| {
            format!(
                "{field}.secret: must be a 16 or 32 byte key, base64-encoded (got {} bytes)",
                bytes.len()
            )
        })?;
        keys.push((k.name.clone(), cipher));
    }
    Ok(Provider::AesGcm(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    fn config(providers: &str) -> Encryption {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n{providers}"
        );
        Encryption::parse(&text, "enc.yaml").expect("valid configuration")
    }

    fn secret_key() -> String {
        keys::object_key(Kind::Secret, Some("demo"), "db")
    }

    #[test]
    fn secrets_are_sealed_and_opened_and_other_kinds_left_alone() {
        let enc = config(&format!(
            "      - aesgcm:\n          keys:\n            - name: key1\n              secret: {KEY1}\n      - identity: {{}}\n"
        ));
        let key = secret_key();
        let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#.to_vec();
        let sealed = enc.seal(&key, plain.clone()).expect("seal");
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!sealed.windows(8).any(|w| w == b"password"));
        assert_eq!(enc.open(&key, &sealed).expect("open").as_ref(), &plain[..]);
        // Two writes never share a nonce.
        assert_ne!(enc.seal(&key, plain.clone()).expect("seal"), sealed);
        // A value moved under another key does not decrypt.
        let other = keys::object_key(Kind::Secret, Some("demo"), "other");
        assert!(enc.open(&other, &sealed).is_err());
        // Plain values are read through the identity provider.
        assert_eq!(enc.open(&key, &plain).expect("plain").as_ref(), &plain[..]);
        // ConfigMaps are not configured: written as they are.
        let cm = keys::object_key(Kind::ConfigMap, Some("demo"), "c");
        assert_eq!(enc.seal(&cm, plain.clone()).expect("seal"), plain);
    }

    #[test]
    fn rotation_reads_old_keys_and_writes_with_the_first() {
        let old = config(&format!(
            "      - aesgcm:\n          keys:\n            - name: key1\n              secret: {KEY1}\n"
        ));
        let key = secret_key();
        let sealed = old.seal(&key, b"{}".to_vec()).expect("seal");
        let rotated = config(&format!(
            "      - aesgcm:\n          keys:\n            - name: key2\n              secret: {KEY2}\n            - name: key1\n              secret: {KEY1}\n"
        ));
        assert_eq!(
            rotated.open(&key, &sealed).expect("old key").as_ref(),
            b"{}"
        );
        assert!(rotated.is_stale(&key, &sealed));
        let resealed = rotated.seal(&key, b"{}".to_vec()).expect("seal");
        assert!(resealed.starts_with(b"k8s:enc:aesgcm:v1:key2:"));
        assert!(!rotated.is_stale(&key, &resealed));
        // Without the old key, its values are an error, not garbage.
        let only_new = config(&format!(
            "      - aesgcm:\n          keys:\n            - name: key2\n              secret: {KEY2}\n"
        ));
        let e = only_new.open(&key, &sealed).expect_err("key1 unknown");
        assert!(e.to_string().contains("\"key1\""), "{e}");
        // Plain values need the identity provider listed.
        let e = only_new.open(&key, b"{}").expect_err("no identity");
        assert!(e.to_string().contains("identity"), "{e}");
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let bad = |providers: &str, want: &str| {
            let text = format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n{providers}"
            );
            let e = Encryption::parse(&text, "enc.yaml").expect_err(want);
            assert!(e.to_string().contains(want), "{e} lacks {want}");
            assert!(
                e.to_string()
                    .starts_with("encryption configuration enc.yaml: "),
                "{e}"
            );
        };
        bad(
            "      - aesgcm:\n          keys:\n            - name: k\n              secret: c2hvcnQ=\n",
            "resources[0].providers[0].aesgcm.keys[0].secret: must be a 16 or 32 byte key",
        );
        bad(
            "      - aesgcm:\n          keys:\n            - name: k\n              secret: '%%%'\n",
            "secret: must be base64",
        );
        bad(
            "      - aesgcm:\n          keys: []\n",
            "aesgcm.keys: at least one key is required",
        );
        bad("      - {}\n", "providers[0]: name exactly one provider");
        let e = Encryption::parse(
            "apiVersion: v1\nkind: EncryptionConfiguration\nresources: []\n",
            "enc.yaml",
        )
        .expect_err("apiVersion");
        assert!(e.to_string().contains("apiVersion"), "{e}");
        let e = Encryption::parse(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [pods]\n    providers: [{identity: {}}]\n",
            "enc.yaml",
        )
        .expect_err("pods");
        assert!(e.to_string().contains("\"pods\""), "{e}");
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let enc = config(&format!(
            "      - aesgcm:\n          keys:\n            - name: key1\n              secret: {KEY1}\n"
        ));
        assert!(!format!("{enc:?}").contains(KEY1));
    }
}
