//! Running `nft`: scripts go in on stdin (`nft -f -`) so one call is one
//! atomic transaction however large the script; errors carry nft's own
//! message, which names the line and shows the offending text.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The nft binary, looked up in `PATH`.
const NFT: &str = "nft";
/// Longest an nft call may take; a full load of 10 000 services takes a
/// few seconds, so this only catches a hung process.
const NFT_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of nft's stderr an error keeps.
const MAX_STDERR: usize = 4000;

/// Why an nft call failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The binary could not be started (not installed, not in `PATH`).
    #[error("starting `nft {args}`: {source}")]
    Spawn {
        /// The arguments.
        args: String,
        /// The spawn error.
        source: std::io::Error,
    },
    /// nft ran and refused (syntax error, missing object, no permission).
    #[error("`nft {args}` failed ({status}): {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// The exit status.
        status: std::process::ExitStatus,
        /// nft's error output (trimmed).
        stderr: String,
    },
    /// nft did not finish in time; it was killed.
    #[error("`nft {args}` did not finish within {limit:?}")]
    Timeout {
        /// The arguments.
        args: String,
        /// The time it was given.
        limit: Duration,
    },
}

impl NftError {
    /// Whether nft said the object does not exist (ENOENT), as for
    /// `list table` of a missing table.
    pub fn is_not_found(&self) -> bool {
        matches!(self, NftError::Failed { stderr, .. } if stderr.contains("No such file or directory"))
    }
}

/// Runs `nft -f -` with `script` on stdin: one atomic transaction.
pub async fn apply(script: &str) -> Result<(), NftError> {
    run(&["-f", "-"], Some(script)).await.map(|_| ())
}

/// `nft list table ip TABLE`; `None` if the table does not exist.
pub async fn list_table(table: &str) -> Result<Option<String>, NftError> {
    match run(&["list", "table", "ip", table], None).await {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether table `ip TABLE` exists: `nft list tables ip`, which lists
/// names only, so it is cheap however large the table.
pub async fn table_exists(table: &str) -> Result<bool, NftError> {
    let out = run(&["list", "tables", "ip"], None).await?;
    let line = format!("table ip {table}");
    Ok(out.lines().any(|l| l.trim() == line))
}

/// Runs nft with `args`, feeding `stdin` if given; returns its stdout.
pub async fn run(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let joined = args.join(" ");
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NftError::Spawn {
            args: joined.clone(),
            source,
        })?;
    let input = child.stdin.take();
    let feed = async move {
        if let (Some(mut pipe), Some(text)) = (input, stdin) {
            // A write error means nft exited early; its status says why.
            let _ = pipe.write_all(text.as_bytes()).await;
            let _ = pipe.shutdown().await;
        }
    };
    let work = async {
        let ((), output) = tokio::join!(feed, child.wait_with_output());
        output
    };
    let output = match tokio::time::timeout(NFT_TIMEOUT, work).await {
        Err(_) => {
            return Err(NftError::Timeout {
                args: joined,
                limit: NFT_TIMEOUT,
            })
        }
        Ok(Err(source)) => {
            return Err(NftError::Spawn {
                args: joined,
                source,
            })
        }
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.len() > MAX_STDERR {
            let mut cut = MAX_STDERR;
            while !stderr.is_char_boundary(cut) {
                cut -= 1;
            }
            stderr.truncate(cut);
            stderr.push_str(" …");
        }
        return Err(NftError::Failed {
            args: joined,
            status: output.status,
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
