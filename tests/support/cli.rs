//! The read-only commands as a test uses them: run the real binary against
//! a cluster and read its output.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::time::Duration;

use commitd_nodeagent::cri::{proto::ContainerState, Cri, ExecOutput};
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

    /// One object as `commitd get KIND NAME -n NAMESPACE -o json` prints it.
    pub async fn get_json(&self, kind: &str, name: &str, namespace: &str) -> Result<Value, String> {
        let (code, out, err) = self
            .run(&["get", kind, name, "-n", namespace, "-o", "json"])
            .await;
        if code != 0 {
            return Err(format!("get {kind} {name}: {err}"));
        }
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }

    /// The ready addresses of a Service's Endpoints, in order.
    pub async fn endpoint_ips(
        &self,
        name: &str,
        namespace: &str,
    ) -> Result<BTreeSet<String>, String> {
        let ep = self.get_json("endpoints", name, namespace).await?;
        Ok(ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str().map(str::to_string))
            .collect())
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

/// Runs `cmd` in the running container of the pod named `pod` (the first
/// one found) and returns what it printed and its exit code.
pub async fn exec_in(cri: &Cri, pod: &str, cmd: &[&str]) -> Result<ExecOutput, String> {
    let id = running_containers(cri)
        .await
        .into_iter()
        .find(|(_, p)| p == pod)
        .map(|(id, _)| id)
        .ok_or_else(|| format!("no container of {pod} runs"))?;
    cri.exec_sync(&id, cmd, 10).await.map_err(|e| e.to_string())
}

/// [`exec_in`] for a command that must succeed: its standard output.
pub async fn exec_ok(cri: &Cri, pod: &str, cmd: &[&str]) -> Result<String, String> {
    let out = exec_in(cri, pod, cmd).await?;
    if out.exit_code != 0 {
        return Err(format!(
            "{cmd:?} exited {}: {}{}",
            out.exit_code, out.stdout, out.stderr
        ));
    }
    Ok(out.stdout)
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
