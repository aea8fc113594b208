//! The subcommands of `commitd`, one module each, and how they find the
//! cluster: `--etcd`, then `COMMITD_ETCD`, then the endpoint file that
//! `commitd up` writes in its state directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use commitd_api::{Object, Store};

pub mod bench;
pub mod bench_services;
pub mod components;
pub mod describe;
pub mod describe_pod;
pub mod get;
pub mod history;
pub mod logs;
pub mod output;
pub mod plan;
pub mod rollout;
pub mod secret;
pub mod status;
pub mod up;
pub mod validate;

/// The default state directory of `commitd up`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/commitd";
/// The file in the state directory that names the running etcd endpoint.
pub const ENDPOINT_FILE: &str = "etcd.endpoint";

/// How a command finds the cluster.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// etcd endpoints (comma separated), e.g. http://127.0.0.1:2379.
    #[arg(long, env = "COMMITD_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// State directory of `commitd up`, read for its etcd endpoint (and
    /// the encryption configuration it runs with).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The `EncryptionConfiguration` Secrets are stored with (Kubernetes'
    /// `--encryption-provider-config`); by default the one `commitd up`
    /// runs with.
    #[arg(long, env = "COMMITD_ENCRYPTION_PROVIDER_CONFIG")]
    pub encryption_provider_config: Option<PathBuf>,
}

impl ClusterArgs {
    /// The etcd endpoints to use.
    pub fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        if !self.etcd.is_empty() {
            return Ok(self.etcd.clone());
        }
        let file = self.state_dir.join(ENDPOINT_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no cluster named: pass --etcd, set COMMITD_ETCD, or run `commitd up` (no {} found)",
                file.display()
            )
        })?;
        Ok(text.split_whitespace().map(str::to_string).collect())
    }

    /// Connects to the cluster's etcd.
    pub async fn connect(&self) -> anyhow::Result<Store> {
        let endpoints = self.endpoints()?;
        let store = Store::connect(&endpoints)
            .await
            .with_context(|| format!("cannot reach etcd at {}", endpoints.join(",")))?;
        let config = match &self.encryption_provider_config {
            Some(path) => Some(path.clone()),
            None => std::fs::read_to_string(self.state_dir.join(ENCRYPTION_FILE))
                .ok()
                .map(|p| PathBuf::from(p.trim())),
        };
        with_encryption(store, config.as_deref())
    }
}

/// The file in the state directory that names the encryption
/// configuration `commitd up` runs with.
pub const ENCRYPTION_FILE: &str = "encryption-provider-config.path";

/// `store`, sealing and opening values as the configuration at `config`
/// says (if any).
pub fn with_encryption(store: Store, config: Option<&Path>) -> anyhow::Result<Store> {
    match config {
        Some(path) => Ok(store.with_encryption(
            commitd_api::encryption::Encryption::load(path)
                .with_context(|| format!("loading {}", path.display()))?,
        )),
        None => Ok(store),
    }
}

/// Writes the endpoint file `commitd up` leaves for the other commands.
pub fn write_endpoint_file(state_dir: &Path, endpoint: &str) -> anyhow::Result<()> {
    let path = state_dir.join(ENDPOINT_FILE);
    std::fs::write(&path, format!("{endpoint}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Lists a kind, skipping (with a warning) any stored value that does not
/// decode, so one bad key never hides every other object.
pub(crate) async fn list_objects<T: Object>(
    store: &Store,
    scope: Option<&str>,
) -> anyhow::Result<Vec<T>> {
    let raw = store
        .list_raw(T::STORE_KIND, scope)
        .await
        .with_context(|| format!("listing {}", T::STORE_KIND.plural()))?;
    let mut out = Vec::with_capacity(raw.items.len());
    for kv in &raw.items {
        match store.decode::<T>(kv) {
            Ok(obj) => out.push(obj),
            Err(e) => eprintln!("warning: skipping an object that cannot be read: {e}"),
        }
    }
    Ok(out)
}
