//! Draining a node: stopping and removing every pod sandbox and container
//! its agent runs, then what containerd leaves behind (cgroups, logs).
//! `commitd up` drains before it stops its containerd, so stopping the
//! all-in-one leaves nothing on the machine; the pods start again when it
//! comes back.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use tracing::{info, warn};

use crate::cri::Cri;
use crate::pod::worker::remove_host_leftovers;
use crate::pod::{LABEL_NODE, LABEL_POD_UID};

/// Stops every container labelled for `node_name` (SIGTERM, then SIGKILL
/// after `grace_seconds`), removes its sandboxes and cleans their cgroups
/// and log directories under `<state_dir>/pods`. Returns how many
/// sandboxes were removed.
pub async fn drain(
    socket: &Path,
    node_name: &str,
    state_dir: &Path,
    grace_seconds: i64,
) -> anyhow::Result<usize> {
    let cri = Cri::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let labels = BTreeMap::from([(LABEL_NODE.to_string(), node_name.to_string())]);
    let containers = cri.list_containers(&labels).await?;
    let mut stops = tokio::task::JoinSet::new();
    for c in containers {
        let cri = cri.clone();
        stops.spawn(async move {
            if let Err(e) = cri.stop_container(&c.id, grace_seconds).await {
                warn!(container = %c.id, error = %e, "stopping a container while draining");
            }
        });
    }
    while stops.join_next().await.is_some() {}
    let sandboxes = cri.list_pod_sandboxes(&labels).await?;
    for s in &sandboxes {
        cri.stop_pod_sandbox(&s.id)
            .await
            .with_context(|| format!("stopping sandbox {}", s.id))?;
        cri.remove_pod_sandbox(&s.id)
            .await
            .with_context(|| format!("removing sandbox {}", s.id))?;
        if let Some(uid) = s.labels.get(LABEL_POD_UID) {
            remove_host_leftovers(state_dir, uid).await?;
        }
    }
    info!(
        node = node_name,
        sandboxes = sandboxes.len(),
        "node drained"
    );
    Ok(sandboxes.len())
}
