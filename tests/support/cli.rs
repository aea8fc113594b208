//! The read-only commands as a test uses them: run the real binary against
//! a cluster and read its output.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::time::Duration;

use commitd_nodeagent::cri::{proto::ContainerState, Cri};
use serde_json::Value;
use tokio::process::Command;

use super::http_get;
use super::wait::until;

/// The `commitd` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_commitd");

/// How the commands find the cluster (`--state-dir DIR` or `--etcd URL`).
pub struct Cli {
    pub connection: Vec<OsString>,
}

impl Cli {
    /// Runs a command and returns (exit code, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .args(&self.connection)
            .output()
            .await
            .expect("commitd runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The pods of a namespace, as `commitd get pods -o json` lists them.
    pub async fn pods(&self, namespace: &str) -> Result<Vec<Value>, String> {
        let (code, out, err) = self
            .run(&["get", "pods", "-n", namespace, "-o", "json"])
            .await;
        if code != 0 {
            return Err(format!("get pods exited {code}: {err}"));
        }
        let list: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until exactly `n` pods of `namespace` run and each serves a
    /// page containing `page_contains` on its IP; returns (pod, page) pairs.
    pub async fn wait_running(
        &self,
        namespace: &str,
        n: usize,
        page_contains: &str,
        timeout: Duration,
    ) -> Vec<(String, String)> {
        until(
            &format!("{n} running pods serving {page_contains:?}"),
            timeout,
            || async {
                let pods = self.pods(namespace).await?;
                if pods.len() != n {
                    return Err(format!("{} pods", pods.len()));
                }
                let mut pages = Vec::new();
                for p in &pods {
                    let name = p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if !p["metadata"]["deletionTimestamp"].is_null()
                        || p["status"]["phase"] != "Running"
                    {
                        return Err(format!("{name} is {}", p["status"]["phase"]));
                    }
                    let ip = p["status"]["podIP"]
                        .as_str()
                        .ok_or(format!("{name} has no IP"))?;
                    let page = http_get(&format!("{ip}:80")).await?;
                    if !page.contains(page_contains) {
                        return Err(format!("{name} serves {page:?}"));
                    }
                    pages.push((name, page));
                }
                Ok(pages)
            },
        )
        .await
    }
}

/// The running containers containerd reports: (container id, pod name).
pub async fn running_containers(cri: &Cri) -> BTreeSet<(String, String)> {
    let containers = cri
        .list_containers(&Default::default())
        .await
        .expect("list containers");
    let sandboxes = cri
        .list_pod_sandboxes(&Default::default())
        .await
        .expect("list sandboxes");
    containers
        .into_iter()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
        .map(|c| {
            let pod = sandboxes
                .iter()
                .find(|s| s.id == c.pod_sandbox_id)
                .and_then(|s| s.metadata.as_ref())
                .map(|m| m.name.clone())
                .unwrap_or_default();
            (c.id, pod)
        })
        .collect()
}
