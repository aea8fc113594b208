//! A `git daemon` serving bare repositories on 127.0.0.1, for tests of
//! remote Git sources without any network beyond loopback. The daemon is
//! killed when the guard is dropped, also when a test panics.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `git daemon` over a temporary base directory.
pub struct GitDaemon {
    child: Child,
    base: tempfile::TempDir,
    pub port: u16,
}

impl GitDaemon {
    /// Starts a daemon (pushes allowed) serving empty bare repositories
    /// named `names` (HEAD on `main`), and waits until it accepts
    /// connections.
    pub fn start(names: &[&str]) -> GitDaemon {
        let base = tempfile::tempdir().expect("tempdir");
        for name in names {
            git(
                base.path(),
                &["init", "--quiet", "--bare", "--initial-branch=main", name],
            );
        }
        let port = super::free_port();
        let log = std::fs::File::create(base.path().join("daemon.log")).expect("daemon log");
        let child = Command::new("git")
            .arg("daemon")
            .arg("--export-all")
            .arg("--reuseaddr")
            .arg("--informative-errors")
            .arg("--enable=receive-pack")
            .arg(format!("--base-path={}", base.path().display()))
            .arg(format!("--port={port}"))
            .arg("--listen=127.0.0.1")
            .arg(base.path())
            // `git daemon` runs `git-daemon` as its child: a group of their
            // own lets the guard stop both.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting git daemon");
        let daemon = GitDaemon { child, base, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon did not listen on {port}: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        daemon
    }

    /// The `git://` URL of a served repository.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// The served repository's directory.
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.base.path().join(name)
    }

    /// What the daemon logged (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }
}

/// `git push [--force] URL HEAD:refs/heads/main` from the work tree `dir`.
pub fn push(dir: &Path, url: &str, force: bool) {
    let mut args = vec!["push", "--quiet"];
    if force {
        args.push("--force");
    }
    args.extend([url, "HEAD:refs/heads/main"]);
    git(dir, &args);
}

/// Runs git in `dir`; panics with its output when it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
