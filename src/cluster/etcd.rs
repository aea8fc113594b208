//! A private etcd, run as a child process.
//!
//! The all-in-one `commitd up` and the integration tests each need an etcd
//! they fully own: listening only on loopback, on ports nobody else uses,
//! with its data and log under one directory, and gone when they are done.
//! Ports are picked free just before etcd starts; another process can still
//! take one in between, so a start that fails to bind is retried with fresh
//! ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use etcd_client::{Client, ConnectOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long etcd may take to answer a client request after it is started.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long etcd may take to exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Interval between readiness probes while starting.
const POLL: Duration = Duration::from_millis(50);
/// Starts attempted when a port turns out to be taken.
const START_ATTEMPTS: usize = 5;
/// Lines of etcd's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 30;
/// The etcd binary (Debian's `etcd-server` package puts it on the PATH).
const ETCD_BINARY: &str = "etcd";

/// What a private etcd needs to know.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// The directory this etcd owns (created, mode 0700, if missing): etcd
    /// keeps its data in `data/` inside (apart from the log, so etcd never
    /// warns about a foreign file) and its log in `etcd.log`. Reusing a
    /// directory keeps the data.
    pub data_dir: PathBuf,
    /// The loopback port clients connect to; `None` picks a free one (what
    /// tests want; `commitd up` may want a fixed one to print).
    pub client_port: Option<u16>,
    /// More etcd flags, after commitd's own (a later flag wins), e.g.
    /// `--max-txn-ops 1024`.
    pub extra_args: Vec<String>,
}

/// A running private etcd. Dropping it kills etcd; [`Etcd::stop`] stops it
/// gracefully.
#[derive(Debug)]
pub struct Etcd {
    /// The client URL, `http://127.0.0.1:PORT`, for `Store::connect`.
    pub endpoint: String,
    /// The directory this etcd owns (see [`EtcdOptions::data_dir`]).
    pub data_dir: PathBuf,
    /// etcd's combined stdout/stderr.
    pub log: PathBuf,
    /// The member name, unique per start.
    pub name: String,
    child: Option<Child>,
}

/// Starts a private etcd and returns once it serves client requests.
pub async fn start(opts: EtcdOptions) -> anyhow::Result<Etcd> {
    Etcd::start(opts).await
}

/// Why one start attempt failed.
enum AttemptError {
    /// A port was taken between picking it and etcd binding it.
    PortTaken(anyhow::Error),
    /// Anything else; retrying would not help.
    Fatal(anyhow::Error),
}

impl Etcd {
    /// Creates the data directory, starts etcd on free loopback ports (or
    /// the given client port), and waits until a client request succeeds.
    /// Fails with the tail of etcd's log if it exits or is not ready within
    /// the deadline.
    pub async fn start(opts: EtcdOptions) -> anyhow::Result<Etcd> {
        let data_dir = std::path::absolute(&opts.data_dir)
            .with_context(|| format!("resolving {}", opts.data_dir.display()))?;
        prepare_data_dir(&data_dir).await?;
        let mut attempt = 1;
        loop {
            match start_once(&data_dir, opts.client_port, &opts.extra_args).await {
                Ok(etcd) => return Ok(etcd),
                // Fresh ports may help; a fixed client port that is taken
                // stays taken.
                Err(AttemptError::PortTaken(e))
                    if attempt < START_ATTEMPTS && !names_fixed_port(&e, opts.client_port) =>
                {
                    tracing::warn!(attempt, "etcd could not bind its ports; retrying: {e:#}");
                    attempt += 1;
                }
                Err(AttemptError::PortTaken(e)) | Err(AttemptError::Fatal(e)) => return Err(e),
            }
        }
    }

    /// The etcd process id while it runs, for status output and for tests
    /// that simulate a crash.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Stops etcd: SIGTERM, then SIGKILL if it has not exited within the
    /// deadline.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            // The child may exit between id() and kill(): ESRCH is fine.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_DEADLINE, child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for etcd")?;
                tracing::info!(%status, endpoint = %self.endpoint, "etcd stopped");
            }
            Err(_) => {
                tracing::warn!("etcd ignored SIGTERM for {STOP_DEADLINE:?}; killing it");
                child.kill().await.context("killing etcd")?;
            }
        }
        Ok(())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Not stopped through stop(): a test failed or the owner panicked.
        // Drop cannot wait; tokio reaps the killed child in the background.
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
    }
}

/// Whether a bind failure is about the client port the caller fixed.
fn names_fixed_port(e: &anyhow::Error, client_port: Option<u16>) -> bool {
    client_port.is_some_and(|port| format!("{e:#}").contains(&format!("127.0.0.1:{port}")))
}

/// Creates the data directory with the permissions etcd asks for.
async fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(data_dir)
        .await
        .with_context(|| format!("creating {}", data_dir.display()))?;
    tokio::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .await
        .with_context(|| format!("setting permissions of {}", data_dir.display()))
}

/// One attempt: pick ports, spawn etcd, wait for it.
async fn start_once(
    data_dir: &Path,
    client_port: Option<u16>,
    extra_args: &[String],
) -> Result<Etcd, AttemptError> {
    let (client_port, peer_port) = pick_ports(client_port).await.map_err(AttemptError::Fatal)?;
    let name = unique_name();
    let endpoint = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let log = data_dir.join("etcd.log");

    let mut log_file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .await
        .with_context(|| format!("opening {}", log.display()))
        .map_err(AttemptError::Fatal)?;
    // Only this run's lines are quoted on failure.
    let log_start = log_file
        .seek(std::io::SeekFrom::End(0))
        .await
        .with_context(|| format!("reading {}", log.display()))
        .map_err(AttemptError::Fatal)?;
    let log_file = log_file.into_std().await;
    let log_err = log_file
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))
        .map_err(AttemptError::Fatal)?;

    let child = Command::new(ETCD_BINARY)
        .arg("--name")
        .arg(&name)
        .arg("--data-dir")
        .arg(data_dir.join("data"))
        .arg("--listen-client-urls")
        .arg(&endpoint)
        .arg("--advertise-client-urls")
        .arg(&endpoint)
        .arg("--listen-peer-urls")
        .arg(&peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer_url)
        .arg("--initial-cluster")
        .arg(format!("{name}={peer_url}"))
        .arg("--initial-cluster-state")
        .arg("new")
        .arg("--initial-cluster-token")
        .arg(&name)
        // Keep history bounded for long-running all-in-one installs, as
        // kube-apiserver's periodic compaction does; watchers relist.
        .arg("--auto-compaction-mode")
        .arg("periodic")
        .arg("--auto-compaction-retention")
        .arg("1h")
        .arg("--logger")
        .arg("zap")
        .arg("--log-outputs")
        .arg("stderr")
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .context("starting etcd (is the etcd-server package installed?)")
        .map_err(AttemptError::Fatal)?;
    tracing::info!(pid = ?child.id(), %endpoint, %name, data_dir = %data_dir.display(), "etcd started");

    let mut etcd = Etcd {
        endpoint,
        data_dir: data_dir.to_path_buf(),
        log,
        name,
        child: Some(child),
    };
    match wait_ready(&mut etcd, log_start).await {
        Ok(()) => Ok(etcd),
        Err(e) => {
            if let Some(mut child) = etcd.child.take() {
                let _ = child.kill().await;
            }
            Err(e)
        }
    }
}

/// Polls until a client request succeeds, etcd exits, or the deadline
/// passes.
async fn wait_ready(etcd: &mut Etcd, log_start: u64) -> Result<(), AttemptError> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(child) = etcd.child.as_mut() {
            let exited = child
                .try_wait()
                .context("polling etcd")
                .map_err(AttemptError::Fatal)?;
            if let Some(status) = exited {
                etcd.child = None;
                let tail = log_tail(&etcd.log, log_start).await;
                let e = anyhow::anyhow!(
                    "etcd exited during startup ({status}); last lines of {}:\n{tail}",
                    etcd.log.display()
                );
                return Err(if tail.contains("address already in use") {
                    AttemptError::PortTaken(e)
                } else {
                    AttemptError::Fatal(e)
                });
            }
        }
        let last_error = match probe(&etcd.endpoint).await {
            Ok(()) => {
                tracing::info!(endpoint = %etcd.endpoint, "etcd serves clients");
                return Ok(());
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            return Err(AttemptError::Fatal(anyhow::anyhow!(
                "etcd did not answer on {} within {START_DEADLINE:?} ({last_error}); last lines of {}:\n{}",
                etcd.endpoint,
                etcd.log.display(),
                log_tail(&etcd.log, log_start).await
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One client request, as `etcdctl endpoint health` makes.
async fn probe(endpoint: &str) -> anyhow::Result<()> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(1));
    let mut client = Client::connect([endpoint], Some(options)).await?;
    client.get("health", None).await?;
    Ok(())
}

/// A free loopback port for clients (unless given) and one for peers.
/// Both listeners are held at once so the two ports differ.
async fn pick_ports(client_port: Option<u16>) -> anyhow::Result<(u16, u16)> {
    let peer = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("finding a free port")?;
    let client = match client_port {
        Some(port) => port,
        None => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .context("finding a free port")?;
            listener.local_addr()?.port()
        }
    };
    let peer = peer.local_addr()?.port();
    if peer == client {
        bail!("the peer port {peer} is the client port");
    }
    Ok((client, peer))
}

/// A member name no other etcd started by this machine has.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "commitd-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The last lines etcd wrote since `from`.
async fn log_tail(log: &Path, from: u64) -> String {
    let read = async {
        let mut file = tokio::fs::File::open(log).await?;
        file.seek(std::io::SeekFrom::Start(from)).await?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).await?;
        Ok::<_, std::io::Error>(bytes)
    };
    match read.await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        assert_ne!(unique_name(), unique_name());
    }

    #[tokio::test]
    async fn picked_ports_differ() -> anyhow::Result<()> {
        let (client, peer) = pick_ports(None).await?;
        assert_ne!(client, peer);
        let (client, _) = pick_ports(Some(4001)).await?;
        assert_eq!(client, 4001);
        Ok(())
    }

    #[tokio::test]
    async fn starts_serves_restarts_and_stops() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let opts = EtcdOptions {
            data_dir: dir.path().join("etcd"),
            client_port: None,
            extra_args: Vec::new(),
        };
        let etcd = start(opts.clone()).await?;
        let mut client = Client::connect([etcd.endpoint.as_str()], None).await?;
        client.put("/k", "v", None).await?;
        let pid = etcd.pid().context("running")?;
        etcd.stop().await?;
        assert!(
            kill(Pid::from_raw(pid as i32), None).is_err(),
            "etcd still runs"
        );

        // The data survives a restart on new ports.
        let etcd = start(opts).await?;
        let mut client = Client::connect([etcd.endpoint.as_str()], None).await?;
        let resp = client.get("/k", None).await?;
        assert_eq!(resp.kvs().first().map(|kv| kv.value()), Some(&b"v"[..]));
        let log = tokio::fs::read_to_string(&etcd.log).await?;
        assert!(!log.contains("found invalid file"), "{log}");
        etcd.stop().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_taken_client_port_is_reported_with_the_log() -> anyhow::Result<()> {
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = taken.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let err = start(EtcdOptions {
            data_dir: dir.path().to_path_buf(),
            client_port: Some(port),
            extra_args: Vec::new(),
        })
        .await
        .expect_err("the port is taken");
        let msg = format!("{err:#}");
        assert!(msg.contains("address already in use"), "{msg}");
        Ok(())
    }
}
