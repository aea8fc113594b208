//! A private etcd for a test scenario, and the controllers run against it.

use std::future::Future;

use anyhow::{anyhow, Context, Result};
use commitd::cluster::etcd::{Etcd, EtcdOptions};
use commitd_api::Store;
use commitd_reconciler::controllers;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Logs of the code under test, shown for failing tests (`RUST_LOG`
/// overrides the default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,commitd_reconciler=info,commitd_nodeagent=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Runs `scenario` against a fresh private etcd, and always stops etcd.
pub async fn with_etcd<F, Fut>(scenario: F) -> Result<()>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    with_etcd_at(|store, _| scenario(store)).await
}

/// [`with_etcd`], also telling the scenario etcd's endpoint.
pub async fn with_etcd_at<F, Fut>(scenario: F) -> Result<()>
where
    F: FnOnce(Store, String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    init_tracing();
    let tmp = tempfile::Builder::new().prefix("cdetcd").tempdir()?;
    let etcd = Etcd::start(EtcdOptions {
        data_dir: tmp.path().join("etcd"),
        client_port: None,
        extra_args: Vec::new(),
    })
    .await?;
    let result = match Store::connect(std::slice::from_ref(&etcd.endpoint)).await {
        Ok(store) => scenario(store, etcd.endpoint.clone()).await,
        Err(e) => Err(anyhow!(e).context("connecting to etcd")),
    };
    let stopped = etcd.stop().await;
    result?;
    stopped
}

/// A running `controllers::run`.
pub struct Controllers {
    cancel: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl Controllers {
    /// Starts every controller against `store`.
    pub fn start(store: &Store) -> Controllers {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(controllers::run(store.clone(), cancel.clone()));
        Controllers { cancel, task }
    }

    /// Cancels and waits: the loops finish the pass they are in.
    pub async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        self.task.await.context("controller task panicked")?
    }

    /// Drops the task wherever it is (mid-write included), like a killed
    /// process; then stops whatever it left running.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        self.cancel.cancel();
    }
}
