//! A local image registry, run as a child process.
//!
//! Without the internet, images reach a node only from a registry we run
//! ourselves. Serving them from a real registry (`docker-registry`, the
//! distribution project's server) keeps CRI `PullImage` on its real path:
//! resolve, fetch manifest, fetch blobs, unpack. Each instance listens on
//! its own free loopback port, keeps its storage in a temporary directory
//! and has no auth (the Debian default config turns htpasswd on, so we never
//! use it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long the registry may take to answer `GET /v2/`.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long the registry may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Interval between readiness probes.
const POLL: Duration = Duration::from_millis(50);
/// Attempts at finding a port nobody else grabs between probe and bind.
const PORT_ATTEMPTS: usize = 5;

/// A running registry. Dropping it kills the process and deletes its storage.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`, the host part of image names served here.
    pub addr: String,
    /// The registry's combined stdout/stderr.
    pub log: PathBuf,
    child: Option<Child>,
    // Dropped after the child is killed (field order).
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts `docker-registry serve` on a free loopback port and returns
    /// once `GET /v2/` answers 200.
    pub async fn start() -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("commitd-registry-")
            .tempdir()
            .context("creating registry directory")?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            match Registry::start_in(&dir).await {
                Ok((addr, child)) => {
                    tracing::info!(%addr, "registry started");
                    return Ok(Registry {
                        addr,
                        log: dir.path().join("registry.log"),
                        child: Some(child),
                        dir,
                    });
                }
                // Another process took the port between our probe and bind.
                Err(e) if e.to_string().contains("address already in use") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free port found")))
    }

    async fn start_in(dir: &tempfile::TempDir) -> anyhow::Result<(String, Child)> {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").context("finding a port")?;
            probe.local_addr()?.port()
        };
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            storage = serde_json::to_string(&storage.to_string_lossy())?,
        );
        tokio::fs::create_dir_all(&storage).await?;
        tokio::fs::write(&config, yaml)
            .await
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log)?;
        let log_err = log_file.try_clone()?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .context("starting docker-registry (is the docker-registry package installed?)")?;

        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait()? {
                let log = tokio::fs::read_to_string(&log).await.unwrap_or_default();
                bail!("docker-registry exited during startup ({status}): {log}");
            }
            let probe = tokio::time::timeout(POLL * 20, http_status(&addr, "/v2/"));
            let probe = probe
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            match probe {
                Ok(200) => return Ok((addr, child)),
                Ok(_) | Err(_) if Instant::now() < deadline => {}
                Ok(code) => bail!("registry on {addr} answers GET /v2/ with {code}"),
                Err(e) => {
                    let _ = child.kill().await;
                    bail!("registry on {addr} not ready within {START_DEADLINE:?}: {e}")
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Builds the demo images (`commitd/web:1`, `commitd/web:2`,
    /// `commitd/pause:1`) with `examples/images/build.sh` and pushes them
    /// here. Built layouts are cached by the script, so repeated calls only
    /// push.
    pub async fn push_demo_images(&self, repo_root: &Path) -> anyhow::Result<()> {
        let script = repo_root.join("examples/images/build.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg(&self.addr)
            .current_dir(repo_root)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "{} {} failed ({}):\n{}{}",
                script.display(),
                self.addr,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tracing::info!(registry = %self.addr, "demo images pushed");
        Ok(())
    }

    /// The directory holding config, storage and log (deleted on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the registry (SIGTERM, then SIGKILL after a deadline) and
    /// deletes its storage.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(STOP_DEADLINE, child.wait())
                .await
                .is_err()
            {
                child.kill().await.context("killing docker-registry")?;
            }
        }
        Ok(())
    }
}

/// The status code of a plain HTTP/1.0 GET, without an HTTP client crate.
async fn http_status(addr: &str, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("malformed HTTP response from {addr}"))?;
    Ok(code)
}
