//! Secrets encrypted at rest in a real etcd: what etcd holds (and its data
//! directory on disk) is ciphertext, the store reads it back, a rotated key
//! still reads old values and rewrites them, and a store without the key
//! refuses rather than returning garbage.

mod support;

use std::path::Path;

use anyhow::{Context, Result};
use commitd::cluster::etcd::{Etcd, EtcdOptions};
use commitd_api::encryption::Encryption;
use commitd_api::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use commitd_api::k8s_openapi::ByteString;
use commitd_api::{keys, Kind, Store};

const PLAINTEXT: &str = "correct-horse-battery-staple";
/// How the Secret's JSON holds it.
const BASE64: &str = "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==";
const OLD_PLAINTEXT: &str = "written-before-encryption";
const OLD_BASE64: &str = "d3JpdHRlbi1iZWZvcmUtZW5jcnlwdGlvbg==";
const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

fn encryption(keys: &[(&str, &str)], identity: bool) -> Encryption {
    let mut text = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n",
    );
    for (name, secret) in keys {
        text += &format!("            - name: {name}\n              secret: {secret}\n");
    }
    if identity {
        text += "      - identity: {}\n";
    }
    Encryption::parse(&text, "encryption.yaml").expect("valid configuration")
}

fn secret(name: &str, value: &str) -> Secret {
    Secret {
        metadata: commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("demo".into()),
            ..Default::default()
        },
        data: Some(
            [(
                "password".to_string(),
                ByteString(value.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

async fn raw(store: &Store, key: &str) -> Result<Vec<u8>> {
    let resp = store.client().get(key, None).await?;
    resp.kvs()
        .first()
        .map(|kv| kv.value().to_vec())
        .context("no value")
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle)?);
        } else if std::fs::read(&path)?
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    Ok(found)
}

#[tokio::test]
async fn secrets_are_ciphertext_in_etcd_and_keys_rotate() -> Result<()> {
    support::etcd::init_tracing();
    let tmp = tempfile::Builder::new().prefix("cdetcd").tempdir()?;
    let etcd = Etcd::start(EtcdOptions {
        data_dir: tmp.path().join("etcd"),
        client_port: None,
        extra_args: Vec::new(),
    })
    .await?;
    let result = scenario(&etcd).await;
    let stopped = etcd.stop().await;
    result?;
    stopped
}

async fn scenario(etcd: &Etcd) -> Result<()> {
    let endpoints = std::slice::from_ref(&etcd.endpoint);
    let plain_store = Store::connect(endpoints).await?;
    // A Secret stored before encryption was configured.
    plain_store.create(secret("old", OLD_PLAINTEXT)).await?;
    let key1 = Store::connect(endpoints)
        .await?
        .with_encryption(encryption(&[("key1", KEY1)], true));

    // Written with key1: etcd holds ciphertext, the store reads the value.
    key1.create(secret("db", PLAINTEXT)).await?;
    let db_key = keys::object_key(Kind::Secret, Some("demo"), "db");
    let stored = raw(&key1, &db_key).await?;
    assert!(
        stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    let read: Secret = key1.get(Some("demo"), "db").await?.context("db")?;
    assert_eq!(
        read.data
            .unwrap_or_default()
            .get("password")
            .map(|b| &b.0[..]),
        Some(PLAINTEXT.as_bytes())
    );
    // Other kinds stay plain JSON.
    key1.create(ConfigMap {
        metadata: commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("settings".into()),
            namespace: Some("demo".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    let cm = raw(
        &key1,
        &keys::object_key(Kind::ConfigMap, Some("demo"), "settings"),
    )
    .await?;
    assert!(cm.starts_with(b"{"), "{}", String::from_utf8_lossy(&cm));
    // The plain old Secret is read through `identity`, and rewritten.
    assert!(key1.get::<Secret>(Some("demo"), "old").await?.is_some());
    assert_eq!(key1.reseal_stale().await?, 1);
    let old_key = keys::object_key(Kind::Secret, Some("demo"), "old");
    assert!(raw(&key1, &old_key)
        .await?
        .starts_with(b"k8s:enc:aesgcm:v1:key1:"));

    // A store without the configuration refuses to read it.
    let e = plain_store
        .get::<Secret>(Some("demo"), "db")
        .await
        .expect_err("no key");
    assert!(
        e.to_string().contains("--encryption-provider-config"),
        "{e}"
    );

    // Rotation: key2 first, key1 still listed for reading.
    let rotated = Store::connect(endpoints)
        .await?
        .with_encryption(encryption(&[("key2", KEY2), ("key1", KEY1)], false));
    assert!(rotated.get::<Secret>(Some("demo"), "db").await?.is_some());
    assert_eq!(rotated.reseal_stale().await?, 2, "db and old, under key1");
    assert!(raw(&rotated, &db_key)
        .await?
        .starts_with(b"k8s:enc:aesgcm:v1:key2:"));
    assert_eq!(rotated.reseal_stale().await?, 0);
    // key1 can now be dropped.
    let key2_only = Store::connect(endpoints)
        .await?
        .with_encryption(encryption(&[("key2", KEY2)], false));
    let read: Secret = key2_only.get(Some("demo"), "db").await?.context("db")?;
    assert_eq!(
        read.data
            .unwrap_or_default()
            .get("password")
            .map(|b| &b.0[..]),
        Some(PLAINTEXT.as_bytes())
    );

    // Nowhere on etcd's disk (write-ahead log, database) is the value of
    // a Secret written encrypted, neither as is nor in base64 as the JSON
    // holds it; the Secret written before encryption is there, plain,
    // which shows the search looks in the right place.
    for (needle, want) in [(PLAINTEXT, false), (BASE64, false), (OLD_BASE64, true)] {
        let found = files_containing(&etcd.data_dir, needle.as_bytes())?;
        assert_eq!(!found.is_empty(), want, "{needle} in {found:?}");
    }
    Ok(())
}
