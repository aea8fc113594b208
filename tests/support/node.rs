//! One node's runtime for tests: a registry holding the demo images, and a
//! private containerd (own state dir, bridge and subnet) with the pause
//! image imported.

use std::path::Path;

use commitd::cluster::containerd::{Containerd, ContainerdOptions};
use commitd::cluster::image::{ensure_pause_image, PAUSE_IMAGE};
use commitd::cluster::registry::Registry;

/// Starts a registry on a free loopback port and pushes the demo images.
pub async fn registry_with_demo_images() -> anyhow::Result<Registry> {
    let registry = Registry::start().await?;
    registry
        .push_demo_images(Path::new(env!("CARGO_MANIFEST_DIR")))
        .await?;
    Ok(registry)
}

/// Starts containerd under `dir` with pods on `bridge`/`pod_cidr`, pulling
/// from `registry` if given, and imports the pause image.
pub async fn containerd_with_pause(
    dir: &Path,
    bridge: &str,
    pod_cidr: &str,
    registry: Option<&Registry>,
) -> anyhow::Result<Containerd> {
    let containerd = Containerd::start(ContainerdOptions {
        state_dir: dir.join("containerd"),
        sandbox_image: PAUSE_IMAGE.to_string(),
        pod_cidr: pod_cidr.to_string(),
        bridge: bridge.to_string(),
        registries: registry.map(|r| r.addr.clone()).into_iter().collect(),
    })
    .await?;
    ensure_pause_image(&containerd.socket, &dir.join("work")).await?;
    Ok(containerd)
}
