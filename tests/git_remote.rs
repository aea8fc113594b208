//! The Git source following a remote repository, served by a real `git
//! daemon` on 127.0.0.1: the first head is fetched (shallow) into a private
//! mirror, a signed push webhook makes a new commit visible at once even
//! with an hour-long poll, a badly signed one changes nothing, a
//! force-push is fetched, polling alone also sees new commits, an old
//! commit missing from the shallow mirror is still readable, and a
//! failing remote is an error naming its URL. No containers, no etcd.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use commitd_reconciler::git_source::{GitSource, GitSourceConfig, RemoteOptions};
use commitd_reconciler::webhook::WebhookConfig;
use sha2::{Digest, Sha256};
use support::git::TestRepo;
use support::git_daemon::{push, GitDaemon};
use support::wait::until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long a webhook may take to make a push visible.
const WEBHOOK_DEADLINE: Duration = Duration::from_secs(5);
const SECRET: &str = "webhook secret for tests";
const CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  color: blue\n";

/// HMAC-SHA256 written out over `sha2` (RFC 2104), so the test does not
/// share the receiver's code.
fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// POSTs a GitHub push delivery signed with `key`; returns the status.
async fn github_push(addr: SocketAddr, key: &str) -> u16 {
    let body = br#"{"ref":"refs/heads/main","repository":{"name":"state"}}"#;
    let head = format!(
        "POST /hooks/git HTTP/1.1\r\nHost: commitd\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        hmac_sha256_hex(key.as_bytes(), body),
        body.len()
    );
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("the webhook answers in time")
        .expect("the webhook answers");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// A remote source of `url` with its mirror under `state`.
fn remote_config(url: &str, state: &Path, poll: Duration) -> GitSourceConfig {
    GitSourceConfig {
        repo: url.into(),
        path: "manifests".into(),
        poll_interval: poll,
        remote: RemoteOptions {
            mirror_dir: Some(state.join("git-mirror")),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn wait_for_head(source: &GitSource, want: &str, timeout: Duration) {
    until(&format!("head {want}"), timeout, || async {
        match source.head().await {
            Ok(h) if h == want => Ok(()),
            Ok(h) => Err(format!("head {h}")),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn a_signed_push_webhook_fetches_at_once_and_a_bad_one_is_refused() {
    let daemon = GitDaemon::start(&["state.git"]);
    let url = daemon.url("state.git");
    let work = TestRepo::new();
    let first = work.commit("first", &[("manifests/settings.yaml", Some(CONFIGMAP))]);
    let second = work.commit("second", &[("README.md", Some("state\n"))]);
    push(&work.path(), &url, false);

    let state = tempfile::tempdir().expect("tempdir");
    let secret_file = state.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    let hook = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let config = GitSourceConfig {
        // Only the webhook can make pushes visible within the test.
        webhook: Some(WebhookConfig {
            addr: hook,
            secret_file,
        }),
        ..remote_config(&url, state.path(), Duration::from_secs(3600))
    };
    let source = GitSource::new(config);
    let cancel = CancellationToken::new();
    let _wake = source.watch(cancel.clone()).await.expect("watch");

    // The first head, fetched shallow into a private mirror.
    assert_eq!(source.head().await.expect("head"), second);
    let snapshot = source.snapshot(&second).await.expect("snapshot");
    assert_eq!(snapshot.commit.summary, "second");
    assert_eq!(
        snapshot.files,
        vec![(
            "manifests/settings.yaml".to_string(),
            CONFIGMAP.as_bytes().to_vec()
        )]
    );
    let mirror = source
        .mirror_path()
        .expect("a remote has a mirror")
        .to_path_buf();
    assert_eq!(mode(&mirror), 0o700, "mirror {}", mirror.display());
    assert_eq!(mode(&state.path().join("git-mirror")), 0o700);
    {
        let repo = git2::Repository::open_bare(&mirror).expect("open mirror");
        assert!(repo.is_shallow(), "the first fetch is shallow");
        let first = git2::Oid::from_str(&first).expect("oid");
        assert!(
            repo.find_commit(first).is_err(),
            "older history not fetched"
        );
    }

    // A good signature: the new head is visible within the deadline.
    let third = work.commit("third", &[("manifests/more.yaml", Some(CONFIGMAP))]);
    push(&work.path(), &url, false);
    let started = Instant::now();
    assert_eq!(github_push(hook, SECRET).await, 202);
    wait_for_head(&source, &third, WEBHOOK_DEADLINE).await;
    let good_path = started.elapsed();
    {
        // Incremental: the ancestry between both heads is there.
        let repo = git2::Repository::open_bare(&mirror).expect("open mirror");
        let (second, third) = (
            git2::Oid::from_str(&second).expect("oid"),
            git2::Oid::from_str(&third).expect("oid"),
        );
        assert!(repo.find_commit(second).is_ok() && repo.find_commit(third).is_ok());
    }
    assert_eq!(
        source.is_ancestor(&second, &third).await.expect("ancestry"),
        Some(true)
    );

    // A bad signature: 401, and nothing is fetched, even after twice the
    // time the good path took.
    let fourth = work.commit("fourth", &[("manifests/more.yaml", None)]);
    push(&work.path(), &url, false);
    assert_eq!(github_push(hook, "not the secret").await, 401);
    tokio::time::sleep((good_path * 2).max(Duration::from_millis(500))).await;
    assert_eq!(source.head().await.expect("head"), third);
    // The push itself was fine: a good delivery fetches it.
    assert_eq!(github_push(hook, SECRET).await, 202);
    wait_for_head(&source, &fourth, WEBHOOK_DEADLINE).await;

    // A force-push of an unrelated history is fetched too.
    let rewritten = TestRepo::new();
    let fifth = rewritten.commit("rewritten", &[("manifests/settings.yaml", Some(CONFIGMAP))]);
    push(&rewritten.path(), &url, true);
    assert_eq!(github_push(hook, SECRET).await, 202);
    wait_for_head(&source, &fifth, WEBHOOK_DEADLINE).await;
    {
        // A new root commit: not a descendant of the old head. (libgit2's
        // graph walks do not stop at the shallow boundary, so they cannot
        // be asked here.)
        let repo = git2::Repository::open_bare(&mirror).expect("open mirror");
        let fifth = repo
            .find_commit(git2::Oid::from_str(&fifth).expect("oid"))
            .expect("the rewritten head is in the mirror");
        assert_eq!(fifth.parent_count(), 0);
        assert!(repo
            .find_commit(git2::Oid::from_str(&fourth).expect("oid"))
            .is_ok());
    }
    assert_eq!(
        source.is_ancestor(&fourth, &fifth).await.expect("ancestry"),
        Some(false)
    );
    assert_eq!(
        source
            .snapshot(&fifth)
            .await
            .expect("snapshot")
            .commit
            .summary,
        "rewritten"
    );
    cancel.cancel();
}

#[tokio::test]
async fn polling_alone_sees_new_commits_and_wakes_the_follower() {
    let daemon = GitDaemon::start(&["state.git"]);
    let url = daemon.url("state.git");
    let work = TestRepo::new();
    let first = work.commit("first", &[("manifests/settings.yaml", Some(CONFIGMAP))]);
    push(&work.path(), &url, false);
    let state = tempfile::tempdir().expect("tempdir");
    let source = GitSource::new(GitSourceConfig {
        branch: Some("main".into()),
        ..remote_config(&url, state.path(), Duration::from_secs(1))
    });
    let cancel = CancellationToken::new();
    let mut wake = source.watch(cancel.clone()).await.expect("watch");
    wait_for_head(&source, &first, Duration::from_secs(10)).await;
    while wake.try_recv().is_ok() {}

    let second = work.commit("second", &[("manifests/settings.yaml", None)]);
    push(&work.path(), &url, false);
    tokio::time::timeout(Duration::from_secs(10), wake.recv())
        .await
        .expect("a poll that moved the branch wakes the follower")
        .expect("the watch is running");
    assert_eq!(source.head().await.expect("head"), second);
    cancel.cancel();
}

#[tokio::test]
async fn an_old_commit_missing_from_the_shallow_mirror_is_fetched() {
    let daemon = GitDaemon::start(&["state.git"]);
    let url = daemon.url("state.git");
    let work = TestRepo::new();
    let old = work.commit("old", &[("manifests/settings.yaml", Some(CONFIGMAP))]);
    let new = work.commit("new", &[("manifests/settings.yaml", None)]);
    push(&work.path(), &url, false);
    let state = tempfile::tempdir().expect("tempdir");
    let source = GitSource::new(remote_config(&url, state.path(), Duration::from_secs(3600)));
    assert_eq!(source.head().await.expect("head"), new);
    // As after a restart whose applied commit is older than the head.
    let snapshot = source.snapshot(&old).await.expect("old snapshot");
    assert_eq!(snapshot.commit.summary, "old");
    assert_eq!(snapshot.files.len(), 1);

    // Ancestry across the shallow boundary of another fresh mirror: the
    // history is completed to answer.
    let other_state = tempfile::tempdir().expect("tempdir");
    let other = GitSource::new(remote_config(
        &url,
        other_state.path(),
        Duration::from_secs(3600),
    ));
    assert_eq!(other.head().await.expect("head"), new);
    let shallow = || {
        git2::Repository::open_bare(other.mirror_path().expect("mirror"))
            .expect("open mirror")
            .is_shallow()
    };
    assert!(shallow());
    assert_eq!(
        other.is_ancestor(&old, &new).await.expect("ancestry"),
        Some(true)
    );
    assert!(!shallow(), "the mirror was deepened");
    assert_eq!(
        other.is_ancestor(&new, &old).await.expect("ancestry"),
        Some(false)
    );

    // A second source on the same mirror (a restart) reads it as it is.
    let again = GitSource::new(remote_config(&url, state.path(), Duration::from_secs(3600)));
    assert_eq!(again.mirror_path(), source.mirror_path());
    assert_eq!(again.head().await.expect("head"), new);
}

#[tokio::test]
async fn a_failing_remote_is_an_error_naming_its_url() {
    let daemon = GitDaemon::start(&["state.git"]);
    let state = tempfile::tempdir().expect("tempdir");
    let missing = daemon.url("missing.git");
    let source = GitSource::new(remote_config(
        &missing,
        state.path(),
        Duration::from_secs(60),
    ));
    let e = format!("{:#}", source.head().await.expect_err("no such repository"));
    assert!(e.contains(&missing), "{e}");

    // An empty repository has no branch to follow yet.
    let empty = daemon.url("state.git");
    let source = GitSource::new(GitSourceConfig {
        branch: Some("main".into()),
        ..remote_config(&empty, state.path(), Duration::from_secs(60))
    });
    let e = format!("{:#}", source.head().await.expect_err("no branch"));
    assert!(e.contains(&empty), "{e}");

    // Nothing listening.
    let closed = format!("git://127.0.0.1:{}/state.git", support::free_port());
    let source = GitSource::new(remote_config(
        &closed,
        state.path(),
        Duration::from_secs(60),
    ));
    let e = format!("{:#}", source.head().await.expect_err("connection refused"));
    assert!(e.contains(&closed), "{e}");
}

/// A served repository whose `main` holds the `settings` ConfigMap (blue),
/// its work tree, and a private etcd with its state dir.
struct RemoteAndEtcd {
    daemon: GitDaemon,
    url: String,
    work: TestRepo,
    state: tempfile::TempDir,
    etcd: commitd::cluster::etcd::Etcd,
}

impl RemoteAndEtcd {
    async fn start() -> RemoteAndEtcd {
        use commitd::cluster::etcd::{Etcd, EtcdOptions};
        let daemon = GitDaemon::start(&["state.git"]);
        let url = daemon.url("state.git");
        let work = TestRepo::new();
        work.commit("Blue", &[("manifests/settings.yaml", Some(CONFIGMAP))]);
        push(&work.path(), &url, false);
        let state = tempfile::Builder::new()
            .prefix("cdetcd")
            .tempdir()
            .expect("tempdir");
        let etcd = Etcd::start(EtcdOptions {
            data_dir: state.path().join("etcd"),
            client_port: None,
            extra_args: Vec::new(),
        })
        .await
        .expect("etcd starts");
        RemoteAndEtcd {
            daemon,
            url,
            work,
            state,
            etcd,
        }
    }
}

/// The color the `settings` ConfigMap has in etcd.
async fn color(store: &commitd_api::Store) -> Result<String, String> {
    let cm: Option<commitd_api::k8s_openapi::api::core::v1::ConfigMap> = store
        .get(Some("default"), "settings")
        .await
        .map_err(|e| e.to_string())?;
    cm.and_then(|c| c.data?.get("color").cloned())
        .ok_or_else(|| "no settings yet".to_string())
}

/// `commitd reconciler` itself, with its command-line flags, following a
/// remote through a real etcd: the first commit is fetched and applied,
/// a push with a signed webhook is applied at once despite an hour-long
/// poll, and a push announced with a bad signature is refused with 401
/// and not fetched until a good delivery comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_applies_a_remote_push_announced_by_a_webhook() {
    let RemoteAndEtcd {
        daemon: _daemon,
        url,
        work,
        state,
        etcd,
    } = RemoteAndEtcd::start().await;
    let secret_file = state.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    let hook = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let log = std::fs::File::create(state.path().join("reconciler.log")).expect("log");
    let mut reconciler = tokio::process::Command::new(support::cli::BIN)
        .arg("reconciler")
        .args(["--etcd", &etcd.endpoint])
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .args(["--repo", &url, "--path", "manifests", "--interval", "3600"])
        .args(["--webhook-addr", &hook.to_string()])
        .arg("--webhook-secret-file")
        .arg(&secret_file)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("commitd reconciler starts");
    let store = commitd_api::Store::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .expect("connect");
    let reconciler_log =
        || std::fs::read_to_string(state.path().join("reconciler.log")).unwrap_or_default();

    let scenario = async {
        let first = until("the first commit applied", Duration::from_secs(30), || {
            color(&store)
        })
        .await;
        assert_eq!(first, "blue");
        assert!(
            state.path().join("state/git-mirror").is_dir(),
            "the mirror lives in the state dir"
        );

        // A push announced with a bad signature: refused, not fetched.
        work.commit(
            "Green",
            &[(
                "manifests/settings.yaml",
                Some(&CONFIGMAP.replace("blue", "green")),
            )],
        );
        push(&work.path(), &url, false);
        assert_eq!(github_push(hook, "not the secret").await, 401);
        // A signed one is applied at once; time it, so the wait after a
        // bad one below is known to be long enough.
        let started = Instant::now();
        assert_eq!(github_push(hook, SECRET).await, 202);
        until("the pushed commit applied", WEBHOOK_DEADLINE, || async {
            match color(&store).await? {
                c if c == "green" => Ok(()),
                c => Err(c),
            }
        })
        .await;
        let took = started.elapsed();
        eprintln!("a signed webhook was applied in {took:?}");

        work.commit(
            "Red",
            &[(
                "manifests/settings.yaml",
                Some(&CONFIGMAP.replace("blue", "red")),
            )],
        );
        push(&work.path(), &url, false);
        assert_eq!(github_push(hook, "not the secret").await, 401);
        tokio::time::sleep((took * 3).max(Duration::from_secs(1))).await;
        assert_eq!(color(&store).await.as_deref(), Ok("green"));
        assert_eq!(github_push(hook, SECRET).await, 202);
        until("the red commit applied", WEBHOOK_DEADLINE, || async {
            match color(&store).await? {
                c if c == "red" => Ok(()),
                c => Err(c),
            }
        })
        .await;
    };
    let outcome = tokio::time::timeout(Duration::from_secs(120), scenario).await;
    let _ = reconciler.kill().await;
    let stopped = etcd.stop().await;
    if outcome.is_err() {
        panic!(
            "the scenario timed out; reconciler log:\n{}",
            reconciler_log()
        );
    }
    assert!(
        reconciler_log().contains("refused a webhook delivery"),
        "a bad delivery is logged:\n{}",
        reconciler_log()
    );
    stopped.expect("etcd stops");
}

/// `commitd plan --repo URL BRANCH` fetches the branch into a temporary
/// mirror and plans it against the live cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_previews_a_remote_branch_against_the_cluster() {
    let RemoteAndEtcd {
        daemon: _daemon,
        url,
        state,
        etcd,
        ..
    } = RemoteAndEtcd::start().await;
    let out = tokio::process::Command::new(support::cli::BIN)
        .args(["plan", "--repo", &url, "main", "--path", "manifests"])
        .args(["--etcd", &etcd.endpoint])
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .output()
        .await
        .expect("commitd plan runs");
    let stopped = etcd.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("+ configmap/settings (default)"),
        "{stdout}"
    );
    stopped.expect("etcd stops");
}

/// Following release tags of a remote: only the tags matching the glob
/// are fetched, and the newest version among them is the head.
#[tokio::test]
async fn a_remote_is_followed_by_its_newest_release_tag() {
    use support::git_daemon::git;
    let daemon = GitDaemon::start(&["state.git"]);
    let url = daemon.url("state.git");
    let work = TestRepo::new();
    let first = work.commit("first", &[("manifests/settings.yaml", Some(CONFIGMAP))]);
    let second = work.commit("second", &[("README.md", Some("state\n"))]);
    git(&work.path(), &["tag", "v1.9.0", &first]);
    git(&work.path(), &["tag", "nightly-9.9.9", &second]);
    push(&work.path(), &url, false);
    git(&work.path(), &["push", "--quiet", &url, "--tags"]);

    let state = tempfile::tempdir().expect("tempdir");
    let source = GitSource::new(GitSourceConfig {
        tags: Some("v*".into()),
        ..remote_config(&url, state.path(), Duration::from_secs(3600))
    });
    assert_eq!(source.head().await.expect("head"), first);

    git(&work.path(), &["tag", "v1.10.0", &second]);
    git(&work.path(), &["push", "--quiet", &url, "--tags"]);
    let fetched = source.fetch().await.expect("fetch").expect("a remote");
    assert_eq!(fetched.refname, "refs/tags/v1.10.0");
    assert!(fetched.moved());
    assert_eq!(source.head().await.expect("head"), second);
    let mirror =
        git2::Repository::open_bare(source.mirror_path().expect("a mirror")).expect("open mirror");
    assert!(
        mirror.find_reference("refs/tags/nightly-9.9.9").is_err(),
        "tags outside the glob are not fetched"
    );
}

/// An HTTP remote behind basic authentication (git's smart HTTP, served
/// by `git http-backend`): the token from `--git-token-file` is sent as
/// the password of `x-access-token`, as GitHub and Gitea take it; a wrong
/// token is an error naming the URL, never the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_authenticates_an_http_remote() {
    use support::git_daemon::git;
    use support::git_http::GitHttp;
    const TOKEN: &str = "ghp_correct-token-for-tests";
    let root = tempfile::tempdir().expect("tempdir");
    git(
        root.path(),
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            "state.git",
        ],
    );
    let work = TestRepo::new();
    let head = work.commit("first", &[("manifests/settings.yaml", Some(CONFIGMAP))]);
    push(
        &work.path(),
        &root.path().join("state.git").display().to_string(),
        false,
    );
    let server = GitHttp::start(root.path(), "x-access-token", TOKEN).await;
    let url = server.url("state.git");

    let state = tempfile::tempdir().expect("tempdir");
    let token_file = state.path().join("token");
    let source_with = |token: &str, mirror: &str| {
        std::fs::write(&token_file, format!("{token}\n")).expect("write token");
        let mut config = remote_config(&url, &state.path().join(mirror), Duration::from_secs(3600));
        config.remote.token_file = Some(token_file.clone());
        GitSource::new(config)
    };
    let wrong = source_with("ghp_wrong", "wrong");
    let e = format!(
        "{:#}",
        wrong.head().await.expect_err("a wrong token is refused")
    );
    assert!(e.contains(&url), "{e}");
    assert!(!e.contains("ghp_wrong"), "{e}");

    let right = source_with(TOKEN, "right");
    assert_eq!(right.head().await.expect("head"), head);
    let snapshot = right.snapshot(&head).await.expect("snapshot");
    assert_eq!(snapshot.files.len(), 1);
}

/// A remote over SSH (a real OpenSSH server on 127.0.0.1): fetched with a
/// deploy key once the host key is found in known_hosts; a host key that
/// is not there is refused, naming its fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_remote_needs_its_key_and_a_known_host() {
    use support::git_daemon::git;
    use support::sshd::Sshd;
    let Some(sshd) = Sshd::start() else {
        eprintln!("skipping: needs root and openssh-server");
        return;
    };
    let root = tempfile::tempdir().expect("tempdir");
    git(
        root.path(),
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            "state.git",
        ],
    );
    let bare = root.path().join("state.git");
    let work = TestRepo::new();
    let head = work.commit("first", &[("manifests/settings.yaml", Some(CONFIGMAP))]);
    push(&work.path(), &bare.display().to_string(), false);
    let url = sshd.url(&bare);

    let state = tempfile::tempdir().expect("tempdir");
    let source_with = |known_hosts: &Path, mirror: &str| {
        let mut config = remote_config(&url, &state.path().join(mirror), Duration::from_secs(3600));
        config.branch = Some("main".into());
        config.remote.ssh_key_file = Some(sshd.client_key());
        config.remote.known_hosts_file = Some(known_hosts.to_path_buf());
        GitSource::new(config)
    };
    // A known_hosts without this server: refused before any key is sent.
    let empty = state.path().join("empty_known_hosts");
    std::fs::write(&empty, "").expect("write");
    let e = format!(
        "{:#}",
        source_with(&empty, "unknown")
            .head()
            .await
            .expect_err("an unknown host is refused")
    );
    assert!(e.contains("SHA256:"), "{e}");

    let source = source_with(&sshd.known_hosts(), "known");
    let got = source.head().await;
    assert_eq!(
        got.as_deref().ok(),
        Some(head.as_str()),
        "{got:?}\nsshd log:\n{}",
        sshd.log()
    );
    let snapshot = source.snapshot(&head).await.expect("snapshot");
    assert_eq!(snapshot.files.len(), 1);
}
