//! A private containerd, run as a child process.
//!
//! The all-in-one cluster and the integration tests each need a container
//! runtime they fully own: one that never reads `/etc/containerd`, never
//! listens on `/run/containerd/containerd.sock` and never shares images,
//! pods, CNI state or a bridge with anything else on the host. Every path
//! containerd would otherwise take from its defaults is therefore set in a
//! config file of our own under `state_dir`, together with the settings this
//! machine needs (see `RUNTIME.md`).
//!
//! One thing containerd 1.6 does not let us move: its shims put their
//! sockets in `/run/containerd/s/<hash>`. The hash covers our socket path,
//! so instances never collide there.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use commitd_nodeagent::cri::Cri;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long containerd may take to serve CRI after it is started.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long removing the remaining pods may take on the way out.
const REMOVE_PODS_DEADLINE: Duration = Duration::from_secs(20);
/// How long containerd may take to exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How long processes killed on the way out may take to exit.
const REAP_DEADLINE: Duration = Duration::from_secs(10);
/// Interval between readiness probes while starting.
const POLL: Duration = Duration::from_millis(50);
/// Unix socket paths longer than this do not fit `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 100;
/// Where containerd 1.6 shims listen, whatever the config says; file names
/// hash the instance's socket path, so instances never collide.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s/";
/// Lines of containerd's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 30;

/// What a private containerd needs to know. Everything it writes goes under
/// `state_dir`, except the bridge, which is global to the network namespace
/// and therefore named by the caller.
#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// Root of everything this instance owns: config, socket, image store,
    /// runtime state, CNI config and IPAM allocations, log.
    pub state_dir: PathBuf,
    /// The pause image every sandbox runs (e.g. [`super::image::PAUSE_IMAGE`]).
    pub sandbox_image: String,
    /// This node's pod subnet, e.g. `10.244.0.0/24`; the bridge takes the
    /// first address as the pods' gateway.
    pub pod_cidr: String,
    /// Name of the Linux bridge pods attach to (at most 15 characters);
    /// distinct per instance, as it is shared by the whole network namespace.
    pub bridge: String,
    /// Registries (`host:port`) served over plain HTTP that pulls may use.
    pub registries: Vec<String>,
}

/// A running private containerd. Dropping it kills containerd and whatever
/// it left running; [`Containerd::stop`] does the same gracefully.
#[derive(Debug)]
pub struct Containerd {
    /// The gRPC socket serving CRI (and containerd's own API, for `ctr`).
    pub socket: PathBuf,
    /// The directory everything of this instance lives under.
    pub state_dir: PathBuf,
    /// The bridge this instance's pods attach to.
    pub bridge: String,
    /// containerd's combined stdout/stderr.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Writes the config, starts `containerd --config FILE`, and returns once
    /// the socket answers CRI `Version`. Fails with the tail of containerd's
    /// log if it exits or is not ready within the deadline.
    pub async fn start(opts: ContainerdOptions) -> anyhow::Result<Containerd> {
        validate(&opts)?;
        let state_dir = std::path::absolute(&opts.state_dir)
            .with_context(|| format!("resolving {}", opts.state_dir.display()))?;
        let socket = state_dir.join("containerd.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "state dir {} is too deep: socket path {} exceeds {MAX_SOCKET_PATH} bytes",
                state_dir.display(),
                socket.display()
            );
        }
        if Cri::connect(&socket).await.is_ok() {
            bail!(
                "a containerd already serves {}; refusing to start a second one on the same state dir",
                socket.display()
            );
        }

        let files = render(&opts, &state_dir)?;
        let config_path = state_dir.join("config.toml");
        tokio::task::spawn_blocking(move || files.write())
            .await
            .context("writing containerd config panicked")??;

        let log = state_dir.join("containerd.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let log_err = log_file
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .context("starting containerd (is the containerd package installed?)")?;
        tracing::info!(pid = ?child.id(), socket = %socket.display(), "containerd started");

        let mut containerd = Containerd {
            socket,
            state_dir,
            bridge: opts.bridge,
            log,
            child: Some(child),
        };
        containerd.wait_ready().await?;
        Ok(containerd)
    }

    /// The containerd process id, while it runs; for status output and for
    /// tests that simulate a crash.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        let mut last_error = String::from("socket never appeared");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("polling containerd")? {
                    self.child = None;
                    bail!(
                        "containerd exited during startup ({status}); last lines of {}:\n{}",
                        self.log.display(),
                        log_tail(&self.log).await
                    );
                }
            }
            if self.socket.exists() {
                match Cri::connect(&self.socket).await {
                    Ok(cri) => match cri.version().await {
                        Ok(version) => {
                            tracing::info!(
                                runtime = %version.runtime_name,
                                version = %version.runtime_version,
                                "containerd serves CRI"
                            );
                            return Ok(());
                        }
                        Err(e) => last_error = e.to_string(),
                    },
                    Err(e) => last_error = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd did not serve CRI on {} within {START_DEADLINE:?} ({last_error}); last lines of {}:\n{}",
                    self.socket.display(),
                    self.log.display(),
                    log_tail(&self.log).await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops containerd and everything it runs, so that stopping the cluster
    /// stops everything it started: first every pod sandbox is stopped and
    /// removed through CRI (which also runs CNI DEL, releasing the pod's IP
    /// and iptables rules), then containerd gets SIGTERM, then SIGKILL if it
    /// has not exited within the deadline. Whatever survives that — shims and
    /// containers (containerd keeps them running across its own restarts by
    /// design), mounts under the state dir — is killed or detached, and the
    /// bridge is deleted.
    ///
    /// The node agent should have stopped pods gracefully before: here
    /// containers get no grace period. Cgroup directories of the removed
    /// pods are left to the node agent, which knows their parents.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            match tokio::time::timeout(REMOVE_PODS_DEADLINE, remove_all_pods(&self.socket)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(sandboxes = n, "removed pod sandboxes"),
                Ok(Err(e)) => tracing::warn!("removing pod sandboxes: {e:#}"),
                Err(_) => {
                    tracing::warn!("removing pod sandboxes took over {REMOVE_PODS_DEADLINE:?}")
                }
            }
            if let Some(pid) = child.id() {
                // The child may exit between id() and kill(): ESRCH is fine.
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            match tokio::time::timeout(STOP_DEADLINE, child.wait()).await {
                Ok(status) => {
                    let status = status.context("waiting for containerd")?;
                    tracing::info!(%status, "containerd stopped");
                }
                Err(_) => {
                    tracing::warn!("containerd ignored SIGTERM for {STOP_DEADLINE:?}; killing it");
                    child.kill().await.context("killing containerd")?;
                }
            }
        }
        let socket = self.socket.clone();
        let state_dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || reap_leftovers(&socket, &state_dir))
            .await
            .context("cleaning up after containerd panicked")?;
        cleanup_network(&self.bridge).await
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Not stopped through stop(): a test failed or the owner panicked.
        // Drop cannot await, and blocking on the caller's runtime would
        // deadlock it, so the CRI clean-up runs on a runtime of its own in a
        // scoped thread; then everything is killed hard.
        let socket = self.socket.clone();
        std::thread::scope(|scope| {
            let cleaner = scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    match tokio::time::timeout(REMOVE_PODS_DEADLINE, remove_all_pods(&socket)).await
                    {
                        Ok(result) => result.map(|_| ()),
                        Err(_) => Err(anyhow::anyhow!("timed out")),
                    }
                })
            });
            // Joined here so a panic in the cleaner cannot escape drop().
            match cleaner.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("removing pod sandboxes: {e:#}"),
                Err(_) => tracing::warn!("removing pod sandboxes panicked"),
            }
        });
        let _ = child.start_kill();
        reap_leftovers(&self.socket, &self.state_dir);
        if let Err(e) = cleanup_network_blocking(&self.bridge) {
            tracing::warn!("cleaning up network {}: {e:#}", self.bridge);
        }
    }
}

/// Stops and removes every pod sandbox (with its containers) the containerd
/// on `socket` knows; returns how many there were.
async fn remove_all_pods(socket: &Path) -> anyhow::Result<usize> {
    let cri = Cri::connect(socket).await?;
    let sandboxes = cri.list_pod_sandboxes(&Default::default()).await?;
    let mut first_error = None;
    for sandbox in &sandboxes {
        let result = async {
            cri.stop_pod_sandbox(&sandbox.id).await?;
            cri.remove_pod_sandbox(&sandbox.id).await
        }
        .await;
        match result {
            Err(e) if !e.is_not_found() => {
                tracing::warn!(sandbox = %sandbox.id, "{e}");
                first_error.get_or_insert(e);
            }
            _ => {}
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(sandboxes.len()),
    }
}

/// Where libcni caches ADD results. containerd 1.6 offers no setting to move
/// it, so it is shared by every instance; entries are named after the CNI
/// network, which is unique per bridge.
const CNI_CACHE_DIR: &str = "/var/lib/cni/results";

/// The CNI network name of the instance using `bridge`.
fn network_name(bridge: &str) -> String {
    format!("commitd-{bridge}")
}

/// Removes what the pod network of the instance using `bridge` leaves in the
/// host's network namespace: the bridge itself (the CNI bridge plugin
/// creates it on the first pod and never deletes it), and — for pods whose
/// CNI DEL never ran because containerd died first — their NAT rules and
/// libcni cache entries. Safe to call when there is nothing to remove.
pub async fn cleanup_network(bridge: &str) -> anyhow::Result<()> {
    let bridge = bridge.to_string();
    tokio::task::spawn_blocking(move || cleanup_network_blocking(&bridge))
        .await
        .context("network cleanup panicked")?
}

fn cleanup_network_blocking(bridge: &str) -> anyhow::Result<()> {
    validate_bridge(bridge)?;
    let network = network_name(bridge);
    remove_cni_cache_entries(&network);
    remove_nat_rules(&network)?;
    if Path::new("/sys/class/net").join(bridge).exists() {
        let output = std::process::Command::new("ip")
            .args(["link", "delete", "dev", bridge])
            .output()
            .context("running ip link delete")?;
        if !output.status.success() && Path::new("/sys/class/net").join(bridge).exists() {
            bail!(
                "ip link delete {bridge} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Deletes `<network>-<id>-<ifname>` cache files and the loopback entries of
/// the same containers.
fn remove_cni_cache_entries(network: &str) {
    let Ok(entries) = std::fs::read_dir(CNI_CACHE_DIR) else {
        return;
    };
    let prefix = format!("{network}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        if let Some((id, _ifname)) = rest.rsplit_once('-') {
            let loopback = Path::new(CNI_CACHE_DIR).join(format!("cni-loopback-{id}-lo"));
            let _ = std::fs::remove_file(loopback);
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

/// Deletes the NAT rules (and their chains) the bridge plugin's `ipMasq`
/// made for `network`, found by the comment it tags them with, in one
/// `iptables-restore --noflush` transaction.
fn remove_nat_rules(network: &str) -> anyhow::Result<()> {
    let Ok(saved) = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
    else {
        return Ok(()); // No iptables: the bridge plugin could not have used it.
    };
    let script = nat_cleanup_script(&String::from_utf8_lossy(&saved.stdout), network);
    let Some(script) = script else {
        return Ok(());
    };
    let mut restore = std::process::Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore")?;
    if let Some(mut stdin) = restore.stdin.take() {
        use std::io::Write;
        stdin.write_all(script.as_bytes())?;
    }
    let output = restore.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "removing NAT rules of {network} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The `iptables-restore` input deleting every nat rule tagged with
/// `network`, then the chains those rules jumped to; None if there are none.
fn nat_cleanup_script(saved: &str, network: &str) -> Option<String> {
    let marker = format!(r#"name: \"{network}\""#);
    let mut deletes = Vec::new();
    let mut chains = Vec::new();
    for line in saved.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        if !line.contains(&marker) {
            continue;
        }
        deletes.push(format!("-D {rule}"));
        let mut words = rule.split_whitespace();
        while let Some(word) = words.next() {
            if word == "-j" {
                if let Some(target) = words.next().filter(|t| t.starts_with("CNI-")) {
                    if !chains.iter().any(|c| c == target) {
                        chains.push(target.to_string());
                    }
                }
            }
        }
    }
    if deletes.is_empty() {
        return None;
    }
    let mut script = String::from("*nat\n");
    for line in deletes {
        script.push_str(&line);
        script.push('\n');
    }
    for chain in chains {
        script.push_str(&format!("-X {chain}\n"));
    }
    script.push_str("COMMIT\n");
    Some(script)
}

/// Kills the shims serving this instance and the containers under them, then
/// detaches every mount under `state_dir`. Best effort: it runs on the way
/// out, where there is nobody left to report to but the log.
fn reap_leftovers(socket: &Path, state_dir: &Path) {
    let shims = shims_of(socket);
    if !shims.is_empty() {
        tracing::warn!(?shims, "killing containerd shims left running");
        // A shim removes its socket (in /run/containerd/s) only when it exits
        // cleanly, so note where it listens before killing it.
        let sockets = listening_sockets(&shims);
        let mut killed: Vec<i32> = processes()
            .into_iter()
            .filter(|(_, ppid)| shims.contains(ppid))
            .map(|(pid, _)| pid)
            .collect();
        killed.extend(&shims);
        for pid in &killed {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        // SIGKILL is delivered asynchronously: until the processes have
        // exited, their cgroups cannot be removed and their mounts stay busy.
        if !wait_exited(&killed, REAP_DEADLINE) {
            tracing::warn!(pids = ?killed, "processes still alive {REAP_DEADLINE:?} after SIGKILL");
        }
        for path in sockets {
            let _ = std::fs::remove_file(path);
        }
    }
    for mount_point in mounts_under(state_dir) {
        tracing::warn!(mount = %mount_point.display(), "detaching mount left by containerd");
        let _ = nix::mount::umount2(&mount_point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Waits until none of `pids` runs any more (gone, or a zombie waiting to
/// be reaped); false if some still ran at the deadline.
fn wait_exited(pids: &[i32], deadline: Duration) -> bool {
    let until = std::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    loop {
        if !pids.iter().any(|pid| is_running(*pid)) {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether `pid` exists and has not exited yet (a zombie has exited: it no
/// longer holds cgroups or mounts).
fn is_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

/// Pids of `containerd-shim-*` processes started with `-address SOCKET`.
fn shims_of(socket: &Path) -> HashSet<i32> {
    let wanted = socket.as_os_str().as_encoded_bytes();
    let mut shims = HashSet::new();
    for (pid, _) in processes() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.windows(15).any(|w| w == b"containerd-shim"));
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"-address" && w[1] == wanted);
        if is_shim && ours {
            shims.insert(pid);
        }
    }
    shims
}

/// Paths of the unix sockets the given processes hold, from the socket
/// inodes among their fds and the inode → path table of /proc/net/unix.
/// Only paths under the shims' socket directory are returned.
fn listening_sockets(pids: &HashSet<i32>) -> Vec<PathBuf> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    // Num RefCount Protocol Flags Type St Inode Path
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(6)?;
            let path = fields.get(7)?;
            (inodes.contains(*inode) && path.starts_with(SHIM_SOCKET_DIR))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// (pid, parent pid) of every process.
fn processes() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ppid = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    points
}

/// The last lines of containerd's log, for error messages.
async fn log_tail(log: &Path) -> String {
    match tokio::fs::read_to_string(log).await {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read log: {e})"),
    }
}

fn validate_bridge(bridge: &str) -> anyhow::Result<()> {
    if bridge.is_empty()
        || bridge.len() > 15
        || !bridge
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        bail!("bridge name {bridge:?} must be 1-15 characters of [A-Za-z0-9._-]");
    }
    Ok(())
}

fn validate(opts: &ContainerdOptions) -> anyhow::Result<()> {
    validate_bridge(&opts.bridge)?;
    let valid_cidr = opts.pod_cidr.split_once('/').is_some_and(|(addr, prefix)| {
        addr.parse::<Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 30)
    });
    if !valid_cidr {
        bail!(
            "pod CIDR {:?} must be an IPv4 subnet like 10.244.0.0/24",
            opts.pod_cidr
        );
    }
    if opts.sandbox_image.is_empty() {
        bail!("a sandbox image is required");
    }
    for registry in &opts.registries {
        if registry.is_empty() || registry.contains(['/', '"', '\\']) || registry.contains("..") {
            bail!("registry {registry:?} must be host:port");
        }
    }
    Ok(())
}

/// The files a containerd instance is configured by, ready to be written.
struct ConfigFiles {
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, String)>,
}

impl ConfigFiles {
    fn write(&self) -> anyhow::Result<()> {
        for dir in &self.dirs {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        for (path, content) in &self.files {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// A TOML basic string holding `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

fn render(opts: &ContainerdOptions, state_dir: &Path) -> anyhow::Result<ConfigFiles> {
    let cni_conf_dir = state_dir.join("cni/net.d");
    let registry_dir = state_dir.join("certs.d");
    let config = format!(
        r#"# Written by commitd; every path is private to this instance.
version = 2
root = {root}
state = {state}
# Snapshotters that cannot work here only add noise to the log.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = {grpc}

[ttrpc]
  address = {ttrpc}

[debug]
  address = {debug}
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox_image}
  # This VM refuses negative oom_score_adj even to root; without this every
  # RunPodSandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  # The default streaming port (10010) would collide between instances.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {runc_root}

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {cni_conf_dir}
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {registry_dir}
"#,
        root = toml_path(&state_dir.join("root")),
        state = toml_path(&state_dir.join("state")),
        grpc = toml_path(&state_dir.join("containerd.sock")),
        ttrpc = toml_path(&state_dir.join("containerd.sock.ttrpc")),
        debug = toml_path(&state_dir.join("debug.sock")),
        opt = toml_path(&state_dir.join("opt")),
        sandbox_image = toml_str(&opts.sandbox_image),
        runc_root = toml_path(&state_dir.join("runc")),
        cni_conf_dir = toml_path(&cni_conf_dir),
        registry_dir = toml_path(&registry_dir),
    );

    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network_name(&opts.bridge),
        "plugins": [
            {
                "type": "bridge",
                "bridge": opts.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": opts.pod_cidr }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": state_dir.join("cni/ipam"),
                },
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
                "snat": true,
            },
        ],
    });

    let mut files = vec![
        (state_dir.join("config.toml"), config),
        (
            cni_conf_dir.join("10-commitd.conflist"),
            serde_json::to_string_pretty(&conflist)?,
        ),
    ];
    for registry in &opts.registries {
        files.push((
            registry_dir.join(registry).join("hosts.toml"),
            format!(
                "server = {server}\n\n[host.{server}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                server = toml_str(&format!("http://{registry}")),
            ),
        ));
    }
    Ok(ConfigFiles {
        dirs: vec![
            state_dir.to_path_buf(),
            state_dir.join("cni/ipam"),
            registry_dir,
        ],
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ContainerdOptions {
        ContainerdOptions {
            state_dir: PathBuf::from("/var/lib/x"),
            sandbox_image: "localhost/commitd/pause:1".into(),
            pod_cidr: "10.244.0.0/24".into(),
            bridge: "cd0".into(),
            registries: vec!["127.0.0.1:5000".into()],
        }
    }

    #[test]
    fn every_path_is_under_the_state_dir() {
        let files = render(&opts(), Path::new("/var/lib/x")).unwrap();
        let (_, config) = &files.files[0];
        for line in config.lines() {
            if let Some((_, value)) = line.split_once(" = \"/") {
                assert!(
                    value.starts_with("var/lib/x") || value.starts_with("usr/lib/cni"),
                    "{line}"
                );
            }
        }
        assert!(config.contains("restrict_oom_score_adj = true"));
        assert!(config.contains("SystemdCgroup = false"));
        let hosts = &files.files[2];
        assert_eq!(
            hosts.0,
            PathBuf::from("/var/lib/x/certs.d/127.0.0.1:5000/hosts.toml")
        );
        assert!(hosts.1.contains(r#"[host."http://127.0.0.1:5000"]"#));
    }

    #[test]
    fn rejects_bad_options() {
        let mut o = opts();
        o.bridge = "a-very-long-bridge-name".into();
        assert!(validate(&o).is_err());
        let mut o = opts();
        o.pod_cidr = "10.244.0.0".into();
        assert!(validate(&o).is_err());
        let mut o = opts();
        o.registries = vec!["../etc".into()];
        assert!(validate(&o).is_err());
        assert!(validate(&opts()).is_ok());
    }

    #[test]
    fn nat_cleanup_deletes_only_our_rules_then_chains() {
        let saved = r#"*nat
:POSTROUTING ACCEPT [0:0]
:CNI-aaa - [0:0]
:CNI-bbb - [0:0]
-A POSTROUTING -s 10.214.0.2/32 -m comment --comment "name: \"commitd-cd1\" id: \"x\"" -j CNI-aaa
-A POSTROUTING -s 10.215.0.2/32 -m comment --comment "name: \"other\" id: \"y\"" -j CNI-bbb
-A CNI-aaa -d 10.214.0.0/24 -m comment --comment "name: \"commitd-cd1\" id: \"x\"" -j ACCEPT
-A CNI-aaa ! -d 224.0.0.0/4 -m comment --comment "name: \"commitd-cd1\" id: \"x\"" -j MASQUERADE
COMMIT
"#;
        let script = nat_cleanup_script(saved, "commitd-cd1").unwrap();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines.len(), 6, "{script}");
        assert!(lines[1].starts_with("-D POSTROUTING -s 10.214.0.2/32"));
        assert!(lines[3].starts_with("-D CNI-aaa ! -d"));
        assert_eq!(lines[4], "-X CNI-aaa");
        assert!(nat_cleanup_script(saved, "commitd-cd2").is_none());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
