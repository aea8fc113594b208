//! The pause image, built in Rust and imported straight into containerd.
//!
//! Every pod sandbox needs a pause image, and a node without the internet
//! cannot pull `registry.k8s.io/pause`. Building it here (busybox from the
//! `busybox-static` package in a sleep loop) means a fresh node can run pods
//! with no registry at all: the image is written as an OCI archive and
//! handed to `ctr images import`, which also unpacks it for the CRI plugin.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The name containerd's `sandbox_image` points at. A `localhost/` name is
/// never resolved against Docker Hub, so a missing image fails fast instead
/// of trying the internet.
pub const PAUSE_IMAGE: &str = "localhost/commitd/pause:1";

/// Where the busybox binary comes from (package `busybox-static`).
const BUSYBOX: &str = "/bin/busybox";

/// The sandbox's only process: sleep forever, exit 0 on SIGTERM/SIGINT.
/// `wait` is interruptible by the trap, unlike a foreground `sleep`, so stop
/// is immediate rather than after the grace period.
const PAUSE_CMD: &str = r#"trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done"#;

/// containerd's namespace for everything the CRI plugin manages.
const CRI_NAMESPACE: &str = "k8s.io";

/// Makes sure [`PAUSE_IMAGE`] is in containerd's `k8s.io` namespace, building
/// and importing it if not. Idempotent and cheap when the image is present.
/// `work_dir` receives the archive (kept, so the import can be redone by
/// hand when debugging).
pub async fn ensure_pause_image(socket: &Path, work_dir: &Path) -> anyhow::Result<()> {
    if image_listed(socket, PAUSE_IMAGE).await? {
        tracing::debug!(image = PAUSE_IMAGE, "pause image already present");
        return Ok(());
    }
    let archive = work_dir.join("pause-image.tar");
    let target = archive.clone();
    tokio::task::spawn_blocking(move || write_pause_archive(&target))
        .await
        .context("pause image builder panicked")??;
    let output = ctr(socket)
        .args(["images", "import"])
        .arg(&archive)
        .output()
        .await
        .context("running ctr images import")?;
    if !output.status.success() {
        bail!(
            "ctr images import {} failed ({}): {}",
            archive.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if !image_listed(socket, PAUSE_IMAGE).await? {
        bail!(
            "ctr imported {} but no image named {PAUSE_IMAGE} appeared; ctr said: {}",
            archive.display(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    tracing::info!(image = PAUSE_IMAGE, "pause image imported");
    Ok(())
}

fn ctr(socket: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("ctr");
    command
        .arg("--address")
        .arg(socket)
        .args(["--namespace", CRI_NAMESPACE])
        .kill_on_drop(true);
    command
}

/// Whether `ctr images ls -q` lists exactly `name`.
async fn image_listed(socket: &Path, name: &str) -> anyhow::Result<bool> {
    let output = ctr(socket)
        .args(["images", "ls", "-q"])
        .output()
        .await
        .context("running ctr images ls")?;
    if !output.status.success() {
        bail!(
            "ctr images ls failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.trim() == name))
}

/// The blobs of the image, in the order they are built.
struct Blob {
    media_type: &'static str,
    bytes: Vec<u8>,
}

impl Blob {
    fn digest(&self) -> String {
        sha256(&self.bytes)
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest(),
            "size": self.bytes.len(),
        })
    }
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The GOARCH name of this machine, which containerd matches when it picks
/// what to unpack.
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A tar of `bin/busybox` with `bin/sh` and `bin/sleep` linking to it.
/// Timestamps are fixed so the same busybox always gives the same digest.
fn layer_tar(busybox: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    builder.append_data(&mut dir, "bin/", std::io::empty())?;

    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    file.set_mtime(0);
    builder.append_data(&mut file, "bin/busybox", busybox)?;

    for applet in ["sh", "sleep"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        link.set_mtime(0);
        builder.append_link(&mut link, format!("bin/{applet}"), "busybox")?;
    }
    Ok(builder.into_inner()?)
}

/// Builds the image and writes it as an OCI image-layout tar to `archive`
/// (via a temporary file, so a crash never leaves half an archive).
fn write_pause_archive(archive: &Path) -> anyhow::Result<()> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (install package busybox-static)"))?;
    let layer = layer_tar(&busybox)?;
    let diff_id = sha256(&layer);
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer)?;
    let layer = Blob {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        bytes: gz.finish()?,
    };

    let config = json!({
        "architecture": oci_architecture(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh", "-c", PAUSE_CMD],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "commitd: busybox pause loop" }],
    });
    let config = Blob {
        media_type: "application/vnd.oci.image.config.v1+json",
        bytes: serde_json::to_vec(&config)?,
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    });
    let manifest = Blob {
        media_type: "application/vnd.oci.image.manifest.v1+json",
        bytes: serde_json::to_vec(&manifest)?,
    };
    let tag = PAUSE_IMAGE
        .rsplit_once(':')
        .map_or("latest", |(_, tag)| tag);
    let mut manifest_descriptor = manifest.descriptor();
    manifest_descriptor["annotations"] = json!({
        // containerd's importer names the image from this annotation…
        "io.containerd.image.name": PAUSE_IMAGE,
        // …and other OCI tools from this one.
        "org.opencontainers.image.ref.name": tag,
    });
    manifest_descriptor["platform"] = json!({
        "architecture": oci_architecture(),
        "os": "linux",
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_descriptor],
    });

    let mut out = tar::Builder::new(Vec::new());
    append_file(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    append_file(&mut out, "index.json", &serde_json::to_vec(&index)?)?;
    for blob in [&layer, &config, &manifest] {
        let digest = blob.digest();
        let hex = digest.trim_start_matches("sha256:");
        append_file(&mut out, &format!("blobs/sha256/{hex}"), &blob.bytes)?;
    }
    let bytes = out.into_inner()?;

    if let Some(parent) = archive.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let partial = PathBuf::from(format!("{}.partial", archive.display()));
    std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, archive)
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    Ok(())
}

fn append_file(out: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(bytes.len() as u64);
    header.set_mtime(0);
    out.append_data(&mut header, path, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_holds_busybox_and_links() {
        let layer = layer_tar(b"#!fake busybox").unwrap();
        let mut archive = tar::Archive::new(layer.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let link = entry.link_name().unwrap().map(|l| l.display().to_string());
            names.push((path, link));
        }
        assert_eq!(
            names,
            vec![
                ("bin/".to_string(), None),
                ("bin/busybox".to_string(), None),
                ("bin/sh".to_string(), Some("busybox".to_string())),
                ("bin/sleep".to_string(), Some("busybox".to_string())),
            ]
        );
    }

    #[test]
    fn same_input_same_digest() {
        let a = layer_tar(b"x").unwrap();
        let b = layer_tar(b"x").unwrap();
        assert_eq!(sha256(&a), sha256(&b));
    }
}
